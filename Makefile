# The two set-up commands of the README:
#   make main   create .venv, install, run the pipeline over the built-in catalog
#   make test   create .venv, install, lint and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: main test lint install clean

PIP    := $(BIN)/python -m pip install -q --progress-bar off --disable-pip-version-check -c constraints.txt

# Quiet but not silent: one line per step, pip's own output only for warnings and errors.
$(BIN)/.installed: pyproject.toml constraints.txt
	@echo "install: creating $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV)
	@echo "install: torch 2.13.0 (the longest step: a few minutes on a fresh machine)"
	@$(PIP) torch==2.13.0
	@echo "install: tttla and its dev tools (pyproject.toml, pinned by constraints.txt)"
	@$(PIP) -e '.[dev]'
	@touch $@
	@echo "install: done, $(VENV) ready"

install: $(BIN)/.installed

main: install
	$(BIN)/tttla list
	$(BIN)/tttla catalog

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

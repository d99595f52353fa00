"""Progress of a long loop, shown the way its reader sees it: a tqdm bar on a terminal; anywhere
else (a CI log, a file, a pipe) one plain, flushed line per step of the outermost loop — no
carriage return, no escape code, and nothing for the loops nested inside it.

Every progress display of the toolkit goes through :class:`Progress` or :func:`progress`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

__all__ = ["Progress", "progress", "on_terminal"]

#: how many Progress displays are open now; plain lines come from the outermost one only
_open = 0


def on_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (where a redrawn bar reads well)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """``total`` steps of ``desc``; call :meth:`step` as each step begins.

    On a terminal: a tqdm bar (nested ones stack and vanish when done). Elsewhere: the line
    ``"<desc> <i>/<total> <label>"`` per step, printed only when no other Progress is open."""

    def __init__(self, desc: str, total: int, unit: str = "it", stream: TextIO | None = None):
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream or sys.stderr
        self.count = 0
        self._bar = None
        self._outermost = False

    def __enter__(self) -> Progress:
        global _open
        self._outermost = _open == 0
        _open += 1
        if on_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, leave=False, file=self.stream)
        return self

    def step(self, label: str = "") -> None:
        """A new step begins (the previous one, if any, is done)."""
        self.count += 1
        if self._bar is not None:
            self._bar.update(self.count - 1 - self._bar.n)
            self._bar.set_postfix_str(label)
        elif self._outermost:
            print(f"{self.desc} {self.count}/{self.total} {label}".rstrip(), file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        global _open
        _open -= 1
        if self._bar is not None:
            self._bar.close()


def progress(items: Iterable, desc: str, unit: str = "it", label: Callable[[object], str] = str,
             stream: TextIO | None = None) -> Iterator:
    """Yield ``items`` with a :class:`Progress` step, labelled ``label(item)``, before each one."""
    items = list(items)
    with Progress(desc, len(items), unit, stream) as p:
        for item in items:
            p.step(label(item))
            yield item

"""Progress output as its reader sees it (verify/progress.py): a bar on a terminal, plain lines
in a log — no carriage return, no escape code, one line per step of the outermost loop only."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

from verify.progress import Progress, on_terminal, progress

ROOT = Path(__file__).resolve().parents[1]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _clean_log(text: str) -> None:
    assert "\r" not in text and "\x1b[" not in text, repr(text[:400])


def test_a_log_gets_one_line_per_outer_step_and_nothing_nested():
    log = io.StringIO()
    for name in progress(["a", "b"], "outer", stream=log):
        for _ in progress(range(3), f"inner {name}", stream=log):
            pass
    assert log.getvalue().splitlines() == ["outer 1/2 a", "outer 2/2 b"]
    _clean_log(log.getvalue())
    with Progress("manual", 2, stream=log) as p:
        p.step("first")
        p.step()
    assert log.getvalue().splitlines()[-2:] == ["manual 1/2 first", "manual 2/2"]


def test_a_terminal_gets_a_bar():
    term = FakeTerminal()
    assert on_terminal(term) and not on_terminal(io.StringIO())
    assert list(progress(range(3), "work", stream=term)) == [0, 1, 2]
    assert "\r" in term.getvalue() and "work" in term.getvalue()


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tttla", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_commands_write_plain_bounded_logs(tmp_path):
    catalog = _cli("catalog", "--quick", "--only", "lact_v6,delta_rule", "--out", str(tmp_path))
    assert catalog.returncode == 0, catalog.stderr
    bench = _cli("bench", "delta_rule", "-T", "16", "-D", "4", "--repeats", "1")
    assert bench.returncode == 0, bench.stderr
    for res in (catalog, bench):
        _clean_log(res.stdout + res.stderr)
    assert catalog.stderr.splitlines()[:2] == ["catalog 1/2 lact_v6", "catalog 2/2 delta_rule"]
    assert len((catalog.stdout + catalog.stderr).splitlines()) <= 12  # 2 steps, the table and its footer
    steps = bench.stderr.splitlines()  # one line per timing, each numbered i/n
    assert steps[0].startswith(f"bench delta_rule 1/{len(steps)} matmul forward")
    assert all(re.fullmatch(rf"bench delta_rule {i}/{len(steps)} \w+ forward(\+backward)?", line)
               for i, line in enumerate(steps, 1))


def test_a_pseudo_terminal_gets_a_bar():
    """``tttla bench`` with its stderr on a pty draws tqdm's bar (carriage returns), stdout stays a pipe."""
    main_fd, term_fd = pty.openpty()
    fcntl.ioctl(term_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws nothing at 0 columns
    proc = subprocess.Popen([sys.executable, "-m", "tttla", "bench", "delta_rule", "-T", "16", "-D", "4",
                             "--repeats", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=term_fd,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen = b""
    while True:  # the terminal stays open here until the command has exited and all it wrote is read
        exited = proc.poll() is not None
        while select.select([main_fd], [], [], 0.1)[0]:
            seen += os.read(main_fd, 65536)
        if exited:
            break
    os.close(term_fd)
    os.close(main_fd)
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0
    assert b"\r" in seen and b"bench delta_rule" in seen and b"timing" in seen  # tqdm's bar, in its unit
    assert b"\r" not in stdout

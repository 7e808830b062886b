"""What a person sees while a job runs: the project's own lines (a progress line, the summary, errors) on the
terminal; everything else (Ray's start-up logs and warnings, the C++ core worker's stderr, Ray Data's progress,
the workers' output Ray forwards to the driver) in a log file that the job names, unless verbose.

Quiet works on file descriptors 1 and 2, so native writes and the programs Ray starts are caught too; while it
lasts, `stdout()` and `stderr()` are streams on where those descriptors pointed before.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

VERBOSE_ENV = "RAYLIB_VERBOSE"  # set to 1 for what --verbose does (e.g. under `ray job submit`)
VERBOSE_HELP = f"print Ray's logs and the workers' output here, not into a log file (or set {VERBOSE_ENV}=1)"
PROGRESS_EVERY_S = 30.0  # a progress line at most this often where it cannot be rewritten in place (a job log)

_kept: dict[int, TextIO] = {}  # fd -> a stream on where it pointed before a JobLog redirected it
_on_leave: list[Callable[[], None]] = []  # run as the JobLog is left, still into the log


def stdout() -> TextIO:
    """Where the project's own lines go: the terminal's stdout, also while quiet."""
    return _kept.get(1, sys.stdout)


def stderr() -> TextIO:
    """Where the project's errors and progress go: the terminal's stderr, also while quiet."""
    return _kept.get(2, sys.stderr)


def live() -> bool:
    """Whether a line may be rewritten in place on stderr(): a terminal that nothing else writes to."""
    return bool(_kept) and stderr().isatty()


def on_leave(callback: Callable[[], None]) -> None:
    """Inside a JobLog, run `callback` as it is left, while what is written still goes to the log (stopping the
    Ray this job started, whose shutdown writes too); elsewhere nothing."""
    if _kept:
        _on_leave.append(callback)


def verbose_requested(flag: bool = False) -> bool:
    """--verbose given, or RAYLIB_VERBOSE set to anything but 0/false/no."""
    return flag or os.environ.get(VERBOSE_ENV, "0").strip().lower() not in ("", "0", "false", "no")


class JobLog:
    """`with JobLog(job):` fds 1 and 2 (this process's and the programs it starts) write to a new log file in the
    temp directory, <tmp>/raylib-<job>-<time>-<pid>.log, removed on leaving if empty. Does nothing when verbose
    (or RAYLIB_VERBOSE is set) or already inside one."""

    def __init__(self, job: str, verbose: bool = False):
        self.job, self.verbose = job, verbose_requested(verbose)
        self.path: Path | None = None  # the log, once left and not empty
        self._saved: dict[int, int] = {}  # fd -> a copy of it from before

    def __enter__(self) -> JobLog:
        if self.verbose or _kept:
            return self
        path = Path(tempfile.gettempdir()) / f"raylib-{self.job}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        with open(path, "a") as file:
            for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
                stream.flush()
                self._saved[fd] = os.dup(fd)
                _kept[fd] = _reopen(stream, fd, self._saved[fd])
                os.dup2(file.fileno(), fd)
        self.path = path
        return self

    def __exit__(self, *exc) -> None:
        if not self._saved:
            return
        try:
            while _on_leave:
                _on_leave.pop()()
        finally:
            self._restore()

    def _restore(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self._saved.items():
            _kept.pop(fd).flush()
            os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()
        if not self.path.stat().st_size:
            self.path.unlink()
            self.path = None

    def announce(self) -> None:
        """Name the log on stderr, if it holds anything."""
        if self.path:
            print(f"log: {self.path} (Ray's and the workers' output; --verbose shows it here)", file=sys.stderr,
                  flush=True)


def _reopen(stream: TextIO, fd: int, saved: int) -> TextIO:
    """`stream` itself when it does not write to `fd` (a test's capture), else a stream on the `saved` copy."""
    try:
        if stream.fileno() != fd:
            return stream
    except (AttributeError, OSError, ValueError):
        return stream
    return open(saved, "w", buffering=1, encoding=stream.encoding, errors="backslashreplace", closefd=False)


class ProgressLine:
    """A live progress line on stderr(): rewritten in place on a terminal, else (a job log, a pipe) printed as a
    new line at most every `every` seconds, the first one `every` seconds after the start."""

    def __init__(self, stream: TextIO | None = None, in_place: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, every: float = PROGRESS_EVERY_S):
        self.stream = stream or stderr()
        self.in_place = live() if in_place is None else in_place
        self.clock, self.every = clock, every
        self.last = clock()
        self.width = 0  # of the text on the terminal now

    def show(self, text: str) -> None:
        """Rewrite the line with `text` on a terminal; elsewhere print it if `every` seconds have passed."""
        if self.in_place:
            text = text[:self._columns() - 1]  # a wrapped line could not be rewritten
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        elif self.clock() - self.last >= self.every:
            self.stream.write(text + "\n")
            self.last = self.clock()
        else:
            return
        self.stream.flush()

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return 1 << 16

    def close(self) -> None:
        """End the line on a terminal (its last text stays above what follows)."""
        if self.in_place and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


def duration(seconds: float) -> str:
    """`seconds` for a person: 45s, 12m05s, 3h20m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"

"""Progress lines on stderr for stages that can take seconds, only when stderr is a terminal.

Nothing is drawn when stderr is a pipe or a file (CI logs, `2>log`), or after `silence()` (--json runs). Bars
are click's progressbar."""
from __future__ import annotations

import contextlib
import sys

import click

_STATE = {"silent": False}


def silence(on: bool = True) -> None:
    _STATE["silent"] = on


def enabled() -> bool:
    stream = sys.stderr
    return not _STATE["silent"] and stream is not None and hasattr(stream, "isatty") and stream.isatty()


class _Quiet:
    def update(self, advance: int, total: int | None = None) -> None:
        pass

    __call__ = update


class _Bar:
    """A click bar whose length may arrive with the first update (the solver learns its block count late)."""

    def __init__(self, label: str, length: int):
        self.label, self.length, self.bar = label, length, None

    def _open(self, length: int):
        self.bar = click.progressbar(length=max(1, length), label=self.label, file=sys.stderr, show_eta=True,
                                     show_percent=True)
        self.bar.__enter__()

    def update(self, advance: int, total: int | None = None) -> None:
        if self.bar is None:
            self._open(total if total else self.length)
        elif total:  # a second sub-task (a later group, an auto-width retry): start over with its length
            self.bar.length, self.bar.pos = max(1, total), 0
        if advance:
            self.bar.update(advance)

    def close(self) -> None:
        if self.bar is None:
            self._open(self.length)
        self.bar.update(max(0, self.bar.length - self.bar.pos))
        self.bar.__exit__(None, None, None)

    __call__ = update


@contextlib.contextmanager
def stage(label: str, length: int = 1):
    """`with stage("saving child.onnx") as bar: ... bar.update(1)`; a no-op away from a terminal."""
    if not enabled():
        yield _Quiet()
        return
    bar = _Bar(label, length)
    try:
        yield bar
    finally:
        bar.close()

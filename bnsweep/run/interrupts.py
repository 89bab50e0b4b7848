"""Ctrl-C (SIGINT) and SIGTERM: a run or a sweep ends with one line saying where it stopped and
the command that goes on from there, and the exit status shells expect (130, 143).

Light (no torch): the entry points install the handlers before their heavy imports. Python
ends a process on SIGTERM without unwinding it; here both signals raise KeyboardInterrupt, which
Lightning answers by saving nothing more and exiting with status 1 (its checkpoints of the last
validation stay), and the entry point turns that into the line and the status.
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence

_RECEIVED: list[int] = []  # the signals that interrupted this process


def install() -> None:
    """SIGINT and SIGTERM both interrupt (KeyboardInterrupt), and are remembered."""

    def interrupt(signum: int, frame: object) -> None:
        _RECEIVED.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def received() -> int | None:
    """The signal that interrupted this process, None if none did."""
    return _RECEIVED[-1] if _RECEIVED else None


def exit_status() -> int:
    """128 + the signal's number: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + (received() or signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal: where, and how far its last checkpoint got. A
    KeyboardInterrupt, so that no ``except Exception`` records it as a failed run."""

    def __init__(self, step: int, total: int | None, checkpoint: int | None, testing: bool = False):
        super().__init__(step, total, checkpoint, testing)
        self.step, self.total, self.checkpoint, self.testing = step, total, checkpoint, testing

    def where(self) -> str:
        """``at step 1,240 of 20,000 (last checkpoint step 1,200)``"""
        if self.testing:
            return f"while testing (training had ended at step {self.step:,})"
        of = f" of {self.total:,}" if self.total else ""
        saved = (f"last checkpoint step {self.checkpoint:,}" if self.checkpoint is not None
                 else "no checkpoint yet: it starts over")  # fmt: skip
        return f"at step {self.step:,}{of} ({saved})"


def go_on(script: str, args: Sequence[str], extra: Sequence[str], drop: Sequence[str] = ()) -> str:
    """``python train.py ARGS resume=true …``: the command line as typed, less the settings
    ``extra`` replaces and the keys ``drop`` names, each argument quoted for a shell."""
    keys = {e.split("=", 1)[0] for e in extra} | set(drop)
    kept = [
        a
        for a in args
        if a.split("=", 1)[0].lstrip("+~") not in keys and a not in ("-m", "--multirun")
    ]
    return " ".join(["python", script, *(shlex.quote(a) for a in [*kept, *extra])])

"""A project script (train.py, sweep.py, ``-m bnsweep.report``) run inside the test process, as
``python SCRIPT ARGS`` would run it: the same ``__main__`` block, argv, working directory and
environment, its stdout and stderr captured at the file descriptors (C-level writes included),
its exit status from ``SystemExit`` or an uncaught exception (1, with the traceback on stderr).

Why: a subprocess pays torch's and Lightning's import (6–8 s of CPU on this project's 2-core
machine) before its first step, which was most of the test suite's time. What a subprocess gives
for free is undone here after each run: the environment, the working directory, ``sys.argv``,
``sys.path``, the signal handlers, torch's thread count, default RNG and deterministic flag,
warnings filters, the root logger's handlers, Hydra's global state and mode probe, and the
modules the run imported from the user's folders (a later test's ``mynets.py`` is imported anew).

Tests whose point is a process (signals, kills, several ranks, Slurm, start-up time, what a
fresh interpreter imports) keep ``subprocess``: ``cli(..., process=True)``.
"""

from __future__ import annotations

import faulthandler
import io
import logging
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_OURS = (str(ROOT / "bnsweep"), str(ROOT / "hydra_plugins"))


def _from_users_folder(module: object) -> bool:
    """A module imported from a folder of the run's (a user's network, a test's module), not
    from the environment or the checkout: it must not outlive the run."""
    path = getattr(module, "__file__", None)
    if not path:
        return False
    path = os.path.abspath(path)
    return not path.startswith((sys.prefix, sys.base_prefix, *_OURS))


def _unbind_handlers(streams: tuple) -> None:
    """Logging handlers made during the run on its captured streams (Hydra's job logging,
    a library's first import) write to this process's own streams after it."""
    loggers = [logging.root, *(lg for lg in logging.Logger.manager.loggerDict.values()
                               if isinstance(lg, logging.Logger))]  # fmt: skip
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in streams:
                handler.setStream(sys.stderr)


def _overdue(signum, frame):
    raise TimeoutError("the run went past its timeout")


def run(script: str | Path, args: list[str], cwd: Path, env: dict[str, str],
        module: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:  # fmt: skip
    """``python SCRIPT ARGS`` (``python -m SCRIPT ARGS`` with ``module``) in ``cwd`` under
    ``env``, in this process; the outcome as ``subprocess.run(..., capture_output=True,
    text=True)`` gives it. Past ``timeout`` seconds it raises ``subprocess.TimeoutExpired``, as
    ``subprocess.run`` does: a hang is a failed test, never a stuck suite."""
    import pytorch_lightning  # noqa: F401 (its loggers' handlers bound to the real stderr)
    import torch
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra

    saved = {
        "environ": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv[:],
        "path": sys.path[:], "modules": set(sys.modules), "warnings": warnings.filters[:],
        "signals": {s: signal.getsignal(s) for s in _SIGNALS},
        "threads": torch.get_num_threads(), "rng": torch.get_rng_state(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "root": (logging.root.handlers[:], logging.root.level),
        "get_mode": Hydra.__dict__.get("get_mode"),
        "streams": (sys.stdout, sys.stderr), "fds": (os.dup(1), os.dup(2)),
    }  # fmt: skip
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    code = 0
    overdue = False
    alarm = signal.signal(signal.SIGALRM, _overdue)
    signal.alarm(max(1, int(timeout)))
    # a run stuck in C (a lock, a collective) never sees the alarm: a minute later this process
    # prints every thread's stack and exits, and pytest-xdist reports the test as crashed
    faulthandler.dump_traceback_later(timeout + 60, exit=True)
    try:
        for stream in saved["streams"]:
            stream.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout = io.TextIOWrapper(open(os.dup(1), "wb"), line_buffering=True)  # noqa: SIM115
        sys.stderr = io.TextIOWrapper(open(os.dup(2), "wb"), write_through=True)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        target = str(script) if module else str(ROOT / script)
        sys.argv = [target, *args]
        # what the interpreter makes of PYTHONPATH at its start
        sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if module:
            sys.path.insert(0, str(cwd))
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, str(Path(target).parent))
            runpy.run_path(target, run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except TimeoutError:
        overdue = True
    except BaseException:  # noqa: BLE001 (what Python prints for an uncaught exception)
        traceback.print_exc()
        code = 1
    finally:
        signal.alarm(0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, alarm)
        ours = (sys.stdout, sys.stderr)
        for stream in ours:
            stream.flush()
        sys.stdout, sys.stderr = saved["streams"]
        _unbind_handlers(ours)
        for stream in ours:
            stream.close()
        os.dup2(saved["fds"][0], 1)
        os.dup2(saved["fds"][1], 2)
        for fd in saved["fds"]:
            os.close(fd)
        os.chdir(saved["cwd"])
        os.environ.clear()
        os.environ.update(saved["environ"])
        sys.argv[:] = saved["argv"]
        sys.path[:] = saved["path"]
        for name in set(sys.modules) - saved["modules"]:
            if _from_users_folder(sys.modules[name]):
                del sys.modules[name]
        warnings.filters[:] = saved["warnings"]
        for s, handler in saved["signals"].items():
            signal.signal(s, handler)
        torch.set_num_threads(saved["threads"])
        torch.set_rng_state(saved["rng"])
        torch.use_deterministic_algorithms(saved["deterministic"])
        logging.root.handlers[:], level = saved["root"]
        logging.root.setLevel(level)
        if saved["get_mode"] is not None:
            Hydra.get_mode = saved["get_mode"]
        GlobalHydra.instance().clear()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # a run of several processes whose rank 0 ran here: a later run's Lightning would
            # take the stale group for its own and wait on ranks that are gone
            torch.distributed.destroy_process_group()
    out.seek(0)
    err.seek(0)
    if overdue:
        raise subprocess.TimeoutExpired(script, timeout, out.read(), err.read())
    return subprocess.CompletedProcess(
        [sys.executable, *(["-m"] if module else []), str(script), *args], code,
        out.read().decode(errors="replace"), err.read().decode(errors="replace"),
    )  # fmt: skip

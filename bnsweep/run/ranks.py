"""Data parallelism (``trainer.devices=N``): which process this is, the small collectives the run
needs beside the gradients' (sums, agreement), and the watch that ends every rank within
seconds when one of them ends badly, so that a run of several processes never hangs."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

from bnsweep.config.cli import secondary


def world() -> int:
    """How many processes train this run (torch.distributed's world; 1 where none is set up)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def collective_device() -> torch.device:
    """Where a tensor for a collective must be: the GPU for nccl, else the CPU."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(t: Tensor) -> Tensor:
    """``t`` summed over every process, in place where it can be (one process: ``t``)."""
    import torch.distributed as dist

    if world() == 1:
        return t
    moved = t.to(collective_device())
    dist.all_reduce(moved)
    return moved.to(t.device)


def agreed(ok: bool | Tensor) -> bool:
    """Whether ``ok`` holds on every process (a divergence one rank sees stops every rank at the
    same step, or they would wait for each other forever); one process: ``ok``."""
    if world() == 1:
        return bool(ok)
    return not all_sum(torch.tensor([0.0 if bool(ok) else 1.0])).item()


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[1] == me:
            found.append(int(entry.name))
    return found


def _rank_of(pid: int) -> int | None:
    """The LOCAL_RANK a child process was started with, None for a child that is no rank."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [v for v in environ if v.startswith(b"LOCAL_RANK=")]
    return int(found[0].split(b"=", 1)[1]) if found else None


def _ended_badly(pid: int) -> int | None:
    """A child's exit status where it has ended (a zombie not yet reaped) with one that is not
    0: waitpid's form (/proc stat field 52)."""
    fields = _stat(pid)
    if fields is None or fields[0] != "Z" or len(fields) < 50:
        return None
    status = int(fields[49])
    return status or None


def _described(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.WEXITSTATUS(status)}"


_lock = threading.Lock()
_watched: dict[str, object] = {}  # run_dir, period, seen {pid: rank}: set by watch


def _stop(line: str) -> None:
    """One line, then exit 1; whoever comes second (the watch or the main thread) waits for the
    exit."""
    with _lock:
        print(f"error: {line}; resume=true continues from the last checkpoint "
              f"(hydra.run.dir={_watched['run_dir']} resume=true)", file=sys.stderr, flush=True)  # fmt: skip
        os._exit(1)


def _verdict() -> str | None:
    """Rank 0: the line for a rank that ended badly, its other ranks killed; None if none has."""
    seen: dict[int, int] = _watched["seen"]  # type: ignore[assignment]
    for pid, rank in seen.items():
        if (status := _ended_badly(pid)) is not None:
            for other in seen:
                if other != pid:
                    _kill(other)
            return f"rank {rank} (PID {pid}) {_described(status)}, so every rank stopped"
    return None


def watch(run_dir: Path, period: float = 0.5) -> None:
    """Rank 0 of a local run of several processes: when a rank it started ends badly, say so in
    one line and end every rank (exit status 1). Ranks other than 0: when rank 0 is gone, end.
    A daemon thread (Lightning's own watch kills every process after 5 s, without a word)."""
    from bnsweep.run import interrupts

    parent = os.getppid()
    _watched.update(run_dir=run_dir, period=period, seen={})
    seen: dict[int, int] = _watched["seen"]  # type: ignore[assignment]

    def rank0() -> None:
        scans = 2  # Lightning starts the ranks in one go: the scan after the first that finds one
        while True:
            time.sleep(period)
            if interrupts.received() is not None:
                return  # Ctrl-C or SIGTERM reached every rank: rank 0 says where it stopped
            if scans:
                for pid in _children():
                    if pid not in seen and (rank := _rank_of(pid)) is not None:
                        seen[pid] = rank
                scans -= bool(seen)
            if (line := _verdict()) is not None:
                _stop(line)

    def other() -> None:
        while True:
            time.sleep(period)
            if os.getppid() != parent:
                _stop(f"rank 0 (PID {parent}) ended, so rank {os.environ.get('LOCAL_RANK')} "
                      "stopped")  # fmt: skip

    launched = (
        os.environ.get("LOCAL_RANK", "0") not in ("", "0") and "SLURM_PROCID" not in os.environ
    )
    if launched:
        _watched["parent"] = parent
    target = other if launched else rank0
    threading.Thread(target=target, daemon=True, name="bnsweep-ranks").start()


def fail_secondary(e: BaseException) -> None:
    """A rank other than 0, after an error: where rank 0 has gone (what the lost connection
    means), that line; else this rank's error. Exit 1."""
    rank = os.environ.get("LOCAL_RANK", os.environ.get("RANK", "?"))
    parent = _watched.get("parent")
    deadline = time.time() + 2.0
    while parent is not None and time.time() < deadline:
        if os.getppid() != parent:
            _stop(f"rank 0 (PID {parent}) ended, so rank {rank} stopped")
        time.sleep(0.05)
    _watched.setdefault("run_dir", "?")
    _stop(f"rank {rank}: {' '.join(str(e).split()) or type(e).__name__}")


def fail(e: BaseException) -> None:
    """Rank 0's main thread, after an error while several ranks ran: the line of the rank that
    ended (a lost peer is what a collective reports first), else rank 0's own error; exit 1."""
    if not _watched:
        return  # no run of several processes: the caller reports it
    deadline = time.time() + 4 * float(_watched["period"])  # type: ignore[arg-type]
    while time.time() < deadline:
        if (line := _verdict()) is not None:
            _stop(line)
        time.sleep(0.05)
    seen: dict[int, int] = _watched["seen"]  # type: ignore[assignment]
    for pid, rank in seen.items():
        if not Path(f"/proc/{pid}").exists():  # reaped by Lightning's watch before ours saw it
            _stop(f"rank {rank} (PID {pid}) ended, so every rank stopped")
    for pid in seen:
        _kill(pid)
    _stop(f"rank 0: {' '.join(str(e).split()) or type(e).__name__}")


def _kill(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


# A sweep point on N devices through Slurm is one job of N tasks, started together: rank 0
# decides whether the point trains (it may be finished, or its folder refused) and tells the
# other ranks by a small file, so that they never wait for a rank 0 that will not train.
def _slurm_tasks() -> bool:
    return int(os.environ.get("SLURM_NTASKS") or 1) > 1 and "SLURM_JOB_ID" in os.environ


def _decision(run_dir: Path) -> Path:
    job = os.environ.get("SLURM_JOB_ID", "0")
    restart = os.environ.get("SLURM_RESTART_COUNT") or "0"
    return Path(run_dir).parent / ".ranks" / f"{job}.{restart}"


def announce(run_dir: Path, trains: bool) -> None:
    """Rank 0 of a Slurm job of several tasks: whether the run trains (the others join it) or
    not (they end). Nothing elsewhere."""
    if not _slurm_tasks() or secondary():
        return
    from bnsweep.files import atomic_write

    path = _decision(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, b"train" if trains else b"stop")


def rank0_trains(run_dir: Path, timeout: float = 600.0) -> bool:
    """A rank other than 0 of a Slurm job of several tasks: wait for rank 0's decision."""
    path = _decision(run_dir)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            return path.read_bytes() == b"train"
        time.sleep(0.2)
    raise TimeoutError(f"rank 0 of Slurm job {os.environ.get('SLURM_JOB_ID')} said nothing in "
                       f"{timeout:.0f} s")  # fmt: skip

"""What bnsweep prints: the block that ends a run, a sweep's progress and result lines. Plain
text on stdout, so that a terminal and a log read alike; light (no torch)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _acc(value: float | None) -> str:
    return (
        "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
    )


def best_validation(history: Mapping[str, Sequence[float]]) -> tuple[float | None, int | None]:
    """The best validation accuracy and the step of its first occurrence."""
    accs, steps = history.get("val/acc", []), history.get("val_step", [])
    if not accs:
        return None, None
    i = max(range(len(accs)), key=lambda k: (accs[k], -k))
    return accs[i], steps[i] if i < len(steps) else None


def run_block(run_dir: Path, m: Mapping[str, Any]) -> str:
    """The lines that end python train.py: where the run is, what it scored, how long it took."""
    best, at = best_validation(m.get("history", {}))
    weights = m.get("test_weights", "last")
    which = {"last": "the last weights (test_weights=last; =best tests the best validation's)",
             "none": "no test: test_weights=none (the test set never evaluated)"}.get(
        weights, "the best validation's weights (ckpt/best.ckpt)")  # fmt: skip
    lines = [
        f"run folder  {run_dir}",
        f"test        acc {_acc(m.get('test/acc'))}   loss {_acc(m.get('test/loss'))}   with {which}",
        f"validation  acc {_acc(m.get('val/acc'))} at the end (step {m.get('steps')}), "
        f"best {_acc(best)} at step {at}",
    ]
    for other in ("precise", "running"):  # PreciseBN: the other statistics' scores
        if m.get(f"test/acc_{other}") is not None:
            lines.append(f"{other:<11} test acc {_acc(m[f'test/acc_{other}'])}, validation acc "
                         f"{_acc(m.get(f'val/acc_{other}'))} at the end, with the {other} statistics")  # fmt: skip
    if m.get("diverged"):
        lines.append(f"diverged    at step {m.get('diverged_step')}: the loss turned NaN or inf, "
                     "training stopped there")  # fmt: skip
    if m.get("resumed_from_step") is not None:
        lines.append(f"resumed     from the checkpoint of step {m['resumed_from_step']}")
    time_line = f"time        {duration(m.get('wall_time_s') or 0)}"
    if m.get("fit_time_s"):
        time_line += f" (training and its validations {duration(m['fit_time_s'])})"
    lines.append(time_line)
    return "\n".join(lines)


def finished_block(run_dir: Path, m: Mapping[str, Any]) -> str:
    """For a run that a resume found finished: the same block, said as such."""
    return f"already finished: nothing was run\n{run_block(run_dir, m)}"


def job_start(num: int, total: int | None, name: str, eta_s: float | None) -> str:
    """``job 3/15 · 2_model=lenet_bn2,seed=0 · ETA 21 min``"""
    of = f"/{total}" if total else ""
    eta = f"ETA {duration(eta_s)}" if eta_s is not None else "ETA after the first job"
    return f"job {num + 1}{of} · {readable(name)} · {eta}"


def job_end(num: int, total: int | None, status: str, seconds: float,
            results: Sequence[Mapping[str, Any]], error: str | None = None) -> str:  # fmt: skip
    """``job 3/15 finished in 12.3 s · val acc 0.9812 (best 0.9820) · test acc 0.9803``"""
    head = f"job {num + 1}{f'/{total}' if total else ''}"
    if status == "skipped":
        return f"{head} skipped: finished before"
    if status in ("refused", "failed"):
        return f"{head} {status} after {duration(seconds)}: {error}"
    finished = [r for r in results if not r.get("diverged")]
    parts = [f"{head} {status} in {duration(seconds)}"]
    if len(results) > 1:
        seeds = [r.get("seed") for r in results]  # a job of stacked points: runs of one seed
        noun = "seeds" if len(set(seeds)) == len(seeds) else "runs"
        parts.append(f"{len(results)} {noun}, {len(results) - len(finished)} diverged")
    if finished:
        mean = lambda key: sum(r[key] for r in finished) / len(finished)  # noqa: E731
        label = "mean " if len(finished) > 1 else ""
        parts.append(f"val acc {label}{mean('val/acc'):.4f} (best {mean('val/acc_best'):.4f})")
        if all(r.get("test/acc") is not None for r in finished):  # test_weights=none: no test
            parts.append(f"test acc {label}{mean('test/acc'):.4f}")
        else:
            parts.append("no test (a tuning run)" if finished[0].get("test_weights") == "none"
                         else "no test")  # fmt: skip
    for r in results:
        if r.get("diverged"):
            parts.append(f"seed {r.get('seed')} diverged at step {r.get('diverged_step')}")
    return " · ".join(parts)


def eta(jobs: Sequence[Mapping[str, Any]], total: int | None, parallel: int) -> float | None:
    """Seconds left: the mean time of the jobs this invocation ran (skipped ones left out) ×
    the jobs not started, over the jobs that run side by side."""
    ran = [j["seconds"] for j in jobs if j.get("status") not in ("skipped", "refused")]
    if not ran or not total:
        return None
    return sum(ran) / len(ran) * max(total - len(jobs), 0) / max(parallel, 1)


# a number with a fraction or an exponent, standing alone in a label (not part of a name)
_FLOAT = re.compile(
    r"(?<![\w.])[-+]?(?:(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)(?![\w.])"
)
SHOWN_DIGITS = 12


def readable(text: str) -> str:
    """A label with each number as the user typed it: a float that Hydra's ``range`` or float
    arithmetic wrote with its binary noise (``0.060000000000000005``, ``0.35000000000000003``)
    at SHOWN_DIGITS significant digits (``0.06``, ``0.35``); every other number, and the rest
    of the text, as it is."""

    def short(m: re.Match) -> str:
        s = m.group(0)
        mantissa = re.split("[eE]", s)[0]
        if len(re.sub(r"\D", "", mantissa).lstrip("0")) <= SHOWN_DIGITS:
            return s
        return f"{float(s):.{SHOWN_DIGITS}g}"

    return _FLOAT.sub(short, text)

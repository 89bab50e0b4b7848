"""``--help`` of train.py and sweep.py: the config groups, their options and keys, described
from the comments of conf/ (and of a user's --config-dir), without importing Lightning."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from bnsweep.config.cli import CONF, config_dirs

TRAIN_GROUPS = ("model", "bn", "init", "optimizer", "data", "trainer", "logger")
SWEEP_GROUPS = ("study", *TRAIN_GROUPS)


def _comments(lines: list[str]) -> str:
    return " ".join(line.lstrip("#").strip() for line in lines if line.strip("# "))


def option_text(path: Path) -> str:
    """The whole comment at the top of an option's YAML file (after ``# @package``)."""
    head = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            head.append(line)
    return _comments(head)


def option_description(path: Path) -> str:
    """The first sentence of an option's comment: its line in ``--help``."""
    text = option_text(path)
    return re.split(r"\. (?=[A-Z])", text)[0].rstrip(".") if text else ""


def key_descriptions(path: Path, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for the keys of a YAML file, from the comment on their line
    or the comment lines just above; nested keys by their dotted name (``sweep.tune.key``)."""
    out: list[tuple[str, str, str]] = []
    above: list[str] = []
    parents: list[tuple[int, str]] = []  # (indent, key) of the mappings the line is inside
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped)
            continue
        if not stripped or stripped.startswith("- ") or stripped.startswith(("defaults", "_")):
            above = []
            continue
        indent = len(line) - len(line.lstrip())
        key, _, rest = stripped.partition(":")
        value, _, inline = rest.partition("#")
        while parents and parents[-1][0] >= indent:
            parents.pop()
        if parents and parents[0][1] in ("hydra", "defaults") or indent != 2 * len(parents):
            above = []
            continue
        name = prefix + ".".join([*(k for _, k in parents), key])
        if not value.strip():
            parents.append((indent, key))
        elif not key.startswith("_"):
            out.append((name, value.strip(), inline.strip() or _comments(above)))
        above = []
    return out


def option_files(group_dir: Path, option: str) -> list[Path]:
    """An option's YAML file, then those of the options of its group it builds on (its
    ``defaults`` list: ``ghost`` on ``momentum``), whose keys it inherits."""
    path = group_dir / f"{option}.yaml"
    out = [path]
    for entry in OmegaConf.load(path).get("defaults", None) or []:
        if isinstance(entry, str) and entry != "_self_" and (group_dir / f"{entry}.yaml").is_file():
            out += [p for p in option_files(group_dir, entry) if p not in out]
    return out


def _global(path: Path) -> bool:
    """Whether an option's file is in the global package (its keys name their group)."""
    return any(line.startswith("# @package _global_") for line in path.read_text().splitlines()[:3])


def help_text(app: str, argv: Sequence[str] = (), conf: Path = CONF) -> str:
    """``python train.py --help`` / ``python sweep.py --help``: the keys of the default options,
    or of those chosen on the command line (``bn=window --help``)."""
    groups = TRAIN_GROUPS if app == "train" else SWEEP_GROUPS
    defaults = {}
    for entry in OmegaConf.load(conf / "train.yaml").defaults:
        if isinstance(entry, dict) or OmegaConf.is_dict(entry):
            defaults.update(dict(entry))
    defaults["study"] = "custom"
    folders = [*config_dirs(argv), conf]  # a config folder of the user's first, as Hydra reads it

    def found(group: str, option: str) -> Path | None:
        return next((d / group / f"{option}.yaml" for d in folders
                     if (d / group / f"{option}.yaml").is_file()), None)  # fmt: skip

    for a in argv:
        group, _, option = a.partition("=")
        if group in groups and found(group, option) is not None:
            defaults[group] = option
    usage = {
        "train": "python train.py [group=option ...] [key=value ...]   one training run",
        "sweep": "python sweep.py [study=NAME] [key=v1,v2 ...] [seeds=[0,1,2]] [--dry-run]   "
                 "a study: points × seeds",
    }[app]  # fmt: skip
    lines = [usage, "", "Config groups (group=option; * the one whose keys are listed below):"]
    for group in groups:
        lines.append(f"  {group}")
        names = sorted({p.stem for d in folders for p in (d / group).glob("*.yaml")})
        for name in names:
            path = found(group, name)
            star = "*" if defaults.get(group) == name else " "
            yours = f" ({path.parent.parent})" if path.parent.parent != conf else ""
            lines.append(f"    {star}{name:<20} {option_description(path)}{yours}")
    lines += ["", "Keys (key=value), with their defaults:"]
    files = [(conf / "train.yaml", "")]
    if app == "sweep":
        files.append((conf / "sweep.yaml", ""))
    for g in ("model", "bn", "init", "optimizer", "data", "trainer"):
        chosen = found(g, defaults[g])
        files += [
            (path, "" if _global(path) else f"{g}.")
            for path in option_files(chosen.parent, defaults[g])
        ]
    seen = set()
    for path, prefix in files:
        for key, default, text in key_descriptions(path, prefix):
            if key in seen or key.startswith(("hydra", "defaults")):
                continue
            seen.add(key)
            lines.append(f"  {key}={default}".ljust(34) + f" {text}".rstrip())
    lines += [
        "",
        "Options of one group show with group=option --help; the composed config with --cfg job.",
        "Hydra's own flags: --hydra-help. Lightning's and Hydra's info logging: hydra.verbose=true.",
        "The manual (mkdocs serve, or docs/): every option with its paper; docs/how-to/troubleshooting.md: every refusal and its fix.",
    ]
    if app == "sweep":
        lines.insert(
            -3, "--dry-run lists the jobs, their run folders and a rough time, without running."
        )
    return "\n".join(lines)

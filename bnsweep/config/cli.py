"""Command-line preparation for sweep.py, kept free of heavy imports (``--help`` stays fast)."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"  # the checkout's conf/
SEED_MAX = 2**32 - 1
NO_RUN_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion")


def parse_seeds(text: str) -> list[int]:
    """``[0,1,2]`` or ``0,1,2`` -> [0, 1, 2]; a clear error naming ``seeds`` otherwise."""
    items = [s.strip() for s in text.strip().strip("[]").split(",") if s.strip()]
    try:
        seeds = [int(s) for s in items]
    except ValueError:
        raise SystemExit(f"error: seeds must be a list of integers >= 0, got {text!r}") from None
    if not seeds or any(not 0 <= s <= SEED_MAX for s in seeds) or len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: seeds must be distinct integers in [0, {SEED_MAX}], got {text!r}")
    return seeds


def config_dirs(argv: Sequence[str]) -> list[Path]:
    """The user's config folders a command line adds to bnsweep's conf/, as Hydra reads them:
    ``--config-dir DIR`` (``-cd DIR``, ``--config-dir=DIR``) and ``hydra.searchpath=[file://DIR]``."""
    dirs = []
    for i, a in enumerate(argv):
        if a in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif a.startswith("--config-dir="):
            dirs.append(a.split("=", 1)[1])
        elif a.lstrip("+").startswith("hydra.searchpath="):
            items = a.split("=", 1)[1].strip().strip("[]").split(",")
            dirs += [
                i.strip().strip("'\"")[7:]
                for i in items
                if i.strip().strip("'\"").startswith("file://")
            ]
    return [Path(d).expanduser().absolute() for d in dirs]


def without_config_dirs(argv: Sequence[str]) -> list[str]:
    """The command line less ``--config-dir DIR``, with every config folder given as one
    ``hydra.searchpath`` override instead (the compose API's way)."""
    dirs = config_dirs(argv)
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in ("--config-dir", "-cd") and i + 1 < len(argv):
            skip = True
            continue
        if a.startswith("--config-dir=") or a.lstrip("+").startswith("hydra.searchpath="):
            continue
        out.append(a)
    if dirs:
        out.append("hydra.searchpath=[" + ",".join(f"'file://{d}'" for d in dirs) + "]")
    return out


def _preset_value(argv: Sequence[str], key: str, conf: Path):
    """``key`` as the study preset sets it, else as sweep.yaml does; None if neither does.
    A preset in a config folder of the user's (``--config-dir``) is read from there."""
    study = next((a.split("=", 1)[1] for a in argv if a.startswith("study=")), None)
    folders = [*config_dirs(argv), conf]
    presets = [d / "study" / f"{study}.yaml" for d in folders] if study else []
    for path in [*presets, conf / "sweep.yaml"]:
        if path.is_file():
            value = OmegaConf.select(OmegaConf.load(path), key, default=None)
            if value is not None:
                return value
    return None


def default_seeds(argv: Sequence[str], conf: Path = CONF) -> list[int]:
    """The study preset's ``seeds`` if it sets them, else sweep.yaml's."""
    seeds = _preset_value(argv, "seeds", conf)
    return [int(s) for s in seeds] if seeds is not None else [0, 1, 2]


def vectorized(argv: Sequence[str], conf: Path = CONF) -> bool:
    """``sweep.vectorize`` from the command line, else the study preset, else sweep.yaml."""
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("sweep.vectorize=")]
    if given:
        value = given[-1]
        if value.lower() not in ("true", "false"):
            raise SystemExit(f"error: sweep.vectorize must be true or false, got {value!r}")
        return value.lower() == "true"
    return bool(_preset_value(argv, "sweep.vectorize", conf))


def always_excluded() -> list[str]:
    """Keys that never name a run folder (besides the fixed, unswept overrides)."""
    from bnsweep.config.keys import FOLDER_NAME_EXCLUDED

    return list(FOLDER_NAME_EXCLUDED)


_PARSER: list = []  # Hydra's override parser, made once (0.1 s)


def is_sweep(override: str) -> bool:
    """Whether an override (``key=value``) sweeps, as Hydra's own ``OverridesParser`` reads it:
    ``a=1,2``, ``range``, ``choice``, ``interval``, ``glob`` sweep; ``sort([3,1])``,
    ``shuffle([1,2])``, ``a=x\\,y``, ``'x,y'`` and lists are single values. One that does not
    parse is no sweep here (Hydra refuses it with its own message)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not _PARSER:
        _PARSER.append(OverridesParser.create())
    try:
        return _PARSER[0].parse_override(override).is_sweep_override()
    except HydraException:
        return False


def swept_values(override: str) -> list[str]:
    """The values a sweep override enumerates, as Hydra's ``OverridesParser`` expands them
    (``a=1,2``, ``choice(1,2)``, ``range(3)``); [] where they are not known before the sweep
    runs (``interval``, ``glob``, a search sweeper's) or the override is no sweep."""
    from hydra.core.override_parser.types import QuotedString, ValueType

    if not is_sweep(override):
        return []
    parsed = _PARSER[0].parse_override(override)
    if parsed.value_type == ValueType.GLOB_CHOICE_SWEEP or not parsed.is_discrete_sweep():
        return []
    values = list(parsed.sweep_iterator())
    if parsed.value_type == ValueType.SIMPLE_CHOICE_SWEEP:  # a=1e-6,1e-3: as typed, if plain
        typed = [s.strip() for s in override.split("=", 1)[1].split(",")]
        if len(typed) == len(values) and all(_reads_as(s, v) for s, v in zip(typed, values)):
            return typed
    # the values themselves: unquoted, unescaped
    return [v.text if isinstance(v, QuotedString) else str(v) for v in values]


def _reads_as(text: str, value: object) -> bool:
    """Whether Hydra reads ``text`` alone as ``value``."""
    from hydra.errors import HydraException

    try:
        return _PARSER[0].parse_override(f"k={text}").value() == value
    except HydraException:
        return False


def folder_name_excludes(args: Sequence[str]) -> list[str]:
    """Overrides that are fixed for the whole sweep: run folders are named by the swept ones."""
    keys = always_excluded()
    for a in args:
        if "=" in a and not a.startswith(("-", "hydra.", "hydra/")):
            key, value = a.split("=", 1)
            key = key.lstrip("+~")
            if not is_sweep(a) and key not in keys:
                keys.append(key)
    return keys


def resume_args(args: list[str]) -> list[str]:
    """``resume=<sweep dir>``: run the sweep again into that folder, skipping finished runs."""
    given = [a for a in args if a.startswith("resume=")]
    if not given:
        return args
    value = _unquoted(given[-1].split("=", 1)[1])
    rest = [a for a in args if not a.startswith("resume=")]
    if value.lower() in ("false", "no", "0"):
        return rest
    folder = Path(value)
    if not (folder / "command.txt").is_file():
        raise SystemExit(f"error: resume={value} is not a sweep folder (no command.txt in it)")
    return [*rest, "resume=true", *quote_paths([f"hydra.sweep.dir={folder}"])]


def sweep_argv(argv: Sequence[str], conf: Path = CONF) -> list[str]:
    """Add the seed fan-out: ``seeds=[0,1,2,3,4]`` (or the default) becomes ``seed=0,1,2,3,4``.

    An explicit ``seed=…`` on the command line wins. With ``sweep.vectorize=true`` there is no
    fan-out: each point's job trains every seed of ``seeds``. ``seeds=0,1,2`` is read as the list it
    means, not as a sweep over a ``seeds`` key. Run folders are named by the swept keys only.
    """
    args = trainer_overrides(quote_paths(argv), conf)
    if any(a in NO_RUN_FLAGS or a.startswith("--cfg") for a in args):
        return args
    args = resume_args(args)
    given = [a for a in args if a.startswith("seeds=")]
    seeds = parse_seeds(given[-1].split("=", 1)[1]) if given else default_seeds(args, conf)
    args = [a for a in args if not a.startswith("seeds=")]
    args.append("seeds=[" + ",".join(map(str, seeds)) + "]")
    explicit_seed = [a for a in args if a.startswith(("seed=", "+seed=", "++seed="))]
    if vectorized(args, conf):
        # one job per point trains every seed of `seeds`; no seed fan-out
        if explicit_seed:
            raise SystemExit(
                f"error: with sweep.vectorize=true the seeds are set by seeds=[...], "
                f"got {explicit_seed[-1]}"
            )
    elif not explicit_seed:
        args.append("seed=" + ",".join(map(str, seeds)))
    if not any(a in ("-m", "--multirun") for a in args):
        args.insert(0, "--multirun")  # sweep.py always sweeps (-m optional)
    excluded = folder_name_excludes(args)
    args.append("hydra.job.config.override_dirname.exclude_keys=[" + ",".join(excluded) + "]")
    return args


PATH_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "data.root")
_GRAMMAR = set("=,[]{}() '\"")  # what Hydra's override grammar reads as more than a path


def quote_paths(argv: Sequence[str]) -> list[str]:
    """Path values quoted for Hydra's override grammar: a sweep's run folders are named like
    ``3_model=lenet,seed=0``, which ``hydra.run.dir=…`` would read as a key and a sweep."""
    out = []
    for a in argv:
        key, sep, value = a.partition("=")
        if (
            sep
            and key.lstrip("+~") in PATH_KEYS
            and value[:1] not in ("'", '"')
            and _GRAMMAR & set(value)
        ):
            quote = "'" if "'" not in value else '"'
            value = f"{quote}{value}{quote}"
        out.append(key + sep + value)
    return out


def _unquoted(value: str) -> str:
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value


def register_resolvers() -> None:
    """The interpolations of bnsweep's configs (bnsweep.config.resolvers), for an entry point that
    composes its config before it imports anything else of bnsweep."""
    from bnsweep.config.resolvers import register

    register()


def skip_mode_probe() -> None:
    """Hydra composes the whole config once only to read ``hydra.mode`` before composing it
    again to run (a tenth of a second of every start: docs/reference/benchmarks.md). train.py sets no
    mode (the probe finds none) and sweep.py always passes --multirun, so the probe cannot
    change which way Hydra runs: it answers None, as it does for train.py, and Hydra goes by
    --multirun."""
    from hydra._internal.hydra import Hydra

    if hasattr(Hydra, "get_mode"):  # Hydra 1.3; a later Hydra without it needs nothing here
        Hydra.get_mode = lambda self, *args, **kwargs: None


def secondary() -> bool:
    """Whether this process is a rank other than 0 of a run of several devices (started by
    Lightning's DDP launcher, torchrun or Slurm): it trains its shard and writes nothing of the
    run's own (bnsweep.run.ranks)."""
    import os

    if any(os.environ.get(k, "0") not in ("", "0") for k in ("RANK", "LOCAL_RANK", "NODE_RANK")):
        return True
    # a Slurm job of several tasks (a sweep point on N devices): task 0 is rank 0
    return int(os.environ.get("SLURM_NTASKS") or 1) > 1 and os.environ.get("SLURM_PROCID",
                                                                            "0") != "0"  # fmt: skip


def rank_overrides(argv: list[str]) -> list[str]:
    """A rank other than 0 writes no log of Hydra's into the run folder (rank 0's is there)."""
    return [*argv, "hydra/job_logging=disabled"] if secondary() else argv


def check_output_dir(
    argv: Sequence[str], key: str = "hydra.run.dir", default: str = "outputs"
) -> None:
    """Exit with one line if the run folder's nearest existing parent cannot be written
    (Hydra would otherwise fail with a traceback while creating it)."""
    import tempfile

    given = [_unquoted(a.split("=", 1)[1]) for a in argv if a.startswith(key + "=")]
    folder = Path(given[-1] if given else default).absolute()
    parent = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    if key == "hydra.run.dir":  # a refused run removes the empty folders made below it
        from bnsweep.files import EXISTED_BEFORE

        EXISTED_BEFORE.append(parent)
    try:
        with tempfile.NamedTemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise SystemExit(
            f"error: cannot write the output folder {folder} ({parent}: {e.strerror or e})"
        ) from None


# ---------------------------------------------------------------------------------------------
# --help: the groups, options and keys, described by the config files' own comments

def trainer_arguments() -> list[str]:
    """The arguments of ``pytorch_lightning.Trainer``, read from its source file (importing
    Lightning takes seconds); [] where that file does not read as expected."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("pytorch_lightning")
    if spec is None or spec.origin is None:
        return []
    try:
        tree = ast.parse((Path(spec.origin).parent / "trainer" / "trainer.py").read_text())
    except (OSError, SyntaxError):
        return []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and f.name == "__init__":
                    return [a.arg for a in [*f.args.args[1:], *f.args.kwonlyargs]]
    return []


def _listed_trainer_keys(argv: Sequence[str], conf: Path) -> set[str]:
    """The keys the trainer options list (conf/trainer/ and a --config-dir's trainer/)."""
    return {str(k) for folder in [*config_dirs(argv), conf]
            for path in (folder / "trainer").glob("*.yaml") for k in OmegaConf.load(path)}  # fmt: skip


def trainer_overrides(argv: Sequence[str], conf: Path = CONF) -> list[str]:
    """``trainer.KEY=value`` for any Trainer argument, as for those conf/trainer/ lists: one it
    does not list is added (Hydra's ``++``); a key that is no Trainer argument (nor bnsweep's
    ``trainer.compile``) is refused in one line naming the closest ones."""
    import difflib

    listed: set[str] | None = None  # read only when a trainer key is given (start-up)
    arguments = None
    out = []
    for a in argv:
        found = re.match(r"trainer\.(\w+)=", a)
        if found and listed is None:
            listed = _listed_trainer_keys(argv, conf)
        if found and found[1] not in listed:
            arguments = trainer_arguments() if arguments is None else arguments
            if arguments and found[1] not in arguments:
                close = difflib.get_close_matches(found[1], sorted({*arguments, *listed}), n=3)
                print(f"error: trainer.{found[1]} is not an argument of pytorch_lightning.Trainer; "
                      f"the closest: {', '.join(close) or 'none'}", file=sys.stderr)  # fmt: skip
                raise SystemExit(2)
            a = "++" + a if arguments else a
        out.append(a)
    return out

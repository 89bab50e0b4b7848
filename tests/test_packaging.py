"""What bnsweep imports is what pyproject.toml declares: every third-party module a bnsweep
module imports comes from a declared dependency, or, imported only inside a function, from an
optional extra (a launcher plugin)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 reads pyproject.toml itself
# modules imported only where a launcher plugin of an extra runs (sweep.py imports them then)
PLUGIN_MODULES = {"bnsweep/sweep/launchers.py"}


def _name(requirement: str) -> str:
    return (
        re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        .lower()
        .replace("_", "-")
        .replace(".", "-")
    )


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level module, line, at module level) of each absolute import of a file."""
    tree = ast.parse(path.read_text())
    top_level = {id(n) for n in tree.body} | {
        id(n) for s in tree.body if isinstance(s, ast.If) for n in s.body
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(n.split(".")[0], node.lineno, id(node) in top_level) for n in names]
    return out


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for rs in project.get("optional-dependencies", {}).values() for r in rs}
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for path in sorted((ROOT / "bnsweep").rglob("*.py")):
        for module, line, eager in _imports(path):
            if module in sys.stdlib_module_names or module == "bnsweep":
                continue
            dists = {_name(d) for d in distributions.get(module, [])}
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if dists & required:
                continue
            if dists & extras and (not eager or str(path.relative_to(ROOT)) in PLUGIN_MODULES):
                continue  # a launcher plugin's, imported where that launcher runs
            problems.append(f"{where} from {sorted(dists) or 'no installed distribution'}: "
                            + ("an extra's, imported at module level" if dists & extras else "not declared"))  # fmt: skip
    assert not problems, "\n".join(problems)


def test_plugin_modules_are_imported_only_where_their_launcher_runs():
    """A module that takes an extra's package at module level is imported by no bnsweep module
    at module level: without that extra, bnsweep still imports."""
    for path in sorted((ROOT / "bnsweep").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                module = node.module.replace(".", "/") + ".py"
                assert module not in PLUGIN_MODULES, (
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}"
                )


# the source of hydra-submitit-launcher 1.2's BaseSubmititLauncher.launch, whose job submission
# bnsweep.sweep.launchers repeats (collecting each job's result on its own)
SUBMITIT_LAUNCH_SHA256 = "546875669010f80d6ceede740e8bf2d18088cf5bcce2eb4794c735fa3dc2fc0e"


def _pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["slurm"]]
    return {_name(r): r for r in reqs if "<" in r}


def test_the_private_hydra_code_bnsweep_relies_on_is_pinned_to_what_was_tested():
    """Where bnsweep relies on code that Hydra and its submitit plugin do not promise to keep
    (Hydra 1.3's mode probe, BasicSweeper.split_arguments and the basic sweeper bnsweep's
    subclasses; the plugin's 1.2 launch, which bnsweep's Slurm launcher mirrors), the
    declared range is the one tested: the versions here lie in it, and the code is as it was,
    so a release that changes it fails here rather than in a sweep."""
    import importlib.metadata
    import inspect

    from packaging.requirements import Requirement

    pins = _pins()
    assert set(pins) >= {"hydra-core", "hydra-submitit-launcher"}, pins
    for name, requirement in pins.items():
        installed = importlib.metadata.version(name)
        assert Requirement(requirement).specifier.contains(installed), (requirement, installed)

    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.hydra import Hydra
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    assert callable(Hydra.get_mode)
    assert list(inspect.signature(BasicSweeper.split_arguments).parameters) == ["overrides", "max_batch_size"]
    import hashlib

    source = inspect.getsource(BaseSubmititLauncher.launch)
    assert hashlib.sha256(source.encode()).hexdigest() == SUBMITIT_LAUNCH_SHA256


def test_bnsweeps_hydra_plugins_are_found_by_hydra_and_patch_nothing():
    """The sweeper that groups vectorized points and the Slurm launchers that collect each job
    on its own are Hydra plugins of their own (subclasses, in Hydra's plugin namespace), found
    by Hydra's scan and named by conf/; Hydra's own classes keep their own methods."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.plugins import Plugins
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    from omegaconf import OmegaConf

    found = Plugins.instance().class_name_to_class
    sweeper = found["hydra_plugins.bnsweep_plugins.sweeper.BnsweepSweeper"]
    slurm = found["hydra_plugins.bnsweep_plugins.launchers.BnsweepSlurmLauncher"]
    # (Hydra's scan imports the plugin modules afresh: classes compared by where they live)
    assert _bases(sweeper) >= {_where(BasicSweeper)} and _bases(slurm) >= {_where(SlurmLauncher)}
    assert sweeper.get_job_batch is not BasicSweeper.get_job_batch
    assert slurm.launch is not SlurmLauncher.launch
    assert SlurmLauncher.launch.__module__ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher"
    assert BasicSweeper.get_job_batch.__module__ == "hydra._internal.core_plugins.basic_sweeper"
    conf = ROOT / "conf" / "hydra"
    assert OmegaConf.load(conf / "sweeper" / "bnsweep.yaml")._target_ == (
        "hydra_plugins.bnsweep_plugins.sweeper.BnsweepSweeper")  # fmt: skip
    for name in ("slurm", "slurm_local"):
        assert OmegaConf.load(conf / "launcher" / f"{name}.yaml")._target_ == (
            "hydra_plugins.bnsweep_plugins.launchers.BnsweepSlurmLauncher")  # fmt: skip
    code = "\n".join(p.read_text() for p in (ROOT / "bnsweep").rglob("*.py"))
    assert ".launch = " not in code  # no launcher of Hydra's is given another launch


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _bases(cls: type) -> set[str]:
    return {_where(c) for c in cls.__mro__[1:]}


def test_another_platform_is_refused_in_one_line():
    """bnsweep is Linux-only (fcntl locks, /proc, glibc's mallopt): elsewhere importing it says
    so in one line and exits non-zero, before an ImportError's traceback could."""
    import subprocess

    code = "import sys; sys.platform = 'darwin'; import bnsweep"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert proc.stderr.strip() == ("error: bnsweep runs on Linux only (fcntl folder locks, /proc, "
                                   "glibc's malloc settings); this is darwin")  # fmt: skip

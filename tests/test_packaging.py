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

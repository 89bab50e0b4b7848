"""The house (bnsweep/__init__.py): packages in the order data flows, imports one way only, no
import circle, modules of one job each (at most 450 lines), no two modules of one name, and the
config checks light enough to refuse a value before torch is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

import bnsweep

PACKAGE = ROOT / "bnsweep"
MAX_LINES = 450


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """bnsweep module → the bnsweep modules it imports, at module level or inside a function."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("bnsweep")
            ):
                for alias in node.names:  # from a package import a module, or a name of a module
                    sub = f"{node.module}.{alias.name}"
                    out.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name.startswith("bnsweep")}
        graph[name] = out - {name}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "bnsweep"


def test_imports_go_one_way():
    order = {layer: i for i, layer in enumerate(bnsweep.LAYERS)}
    wrong = []
    for module, imports in _graph().items():
        if module == "bnsweep":
            continue
        for target in imports:
            here, there = _layer(module), _layer(target)
            if there == "bnsweep":  # the package itself: its version and LAYERS
                continue
            if here != there and order[there] > order[here] and there not in ("files", "terminal"):
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_no_import_circle():
    graph = _graph()
    packages = {m for m in graph if (PACKAGE / Path(*m.split(".")[1:]) / "__init__.py").exists()}
    # a package's __init__ loads its names lazily (importlib), so it is no step of a circle
    edges = {m: {t for t in ts if t not in packages} for m, ts in graph.items()}
    circles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for t in sorted(edges.get(m, ())):
            if state.get(t) == "open":
                circles.append(" → ".join([*path[path.index(t) :], t]))
            elif t not in state:
                visit(t, [*path, t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not circles, circles


def test_modules_have_one_job_and_one_name():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}  # fmt: skip
    assert not long, long
    names = [p.name for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    entry_points = {p.name for p in ROOT.glob("*.py")}
    assert not entry_points & set(names), entry_points & set(
        names
    )  # train.py is the entry point only
    for init in PACKAGE.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), (
            f"{init}: what lives here, what it imports"
        )


def test_the_layers_are_the_packages():
    here = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} | {
        p.stem for p in PACKAGE.glob("*.py")
    }
    assert here - {"__init__"} == set(bnsweep.LAYERS)


def test_config_checks_import_no_torch():
    code = ("import sys, bnsweep.config.checks, bnsweep.config.cli, bnsweep.data.catalog, "
            "bnsweep.nn.architectures; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'pytorch_lightning', 'lightning', 'numpy')))")  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_every_target_a_config_names_resolves():
    """conf/ and tests/conf name classes and functions by ``_target_``: each one still imports
    from where the packages now keep it (data modules by their package's name, as before)."""
    import re

    from hydra.utils import get_object

    targets = {m for p in [*ROOT.glob("conf/**/*.yaml"), *ROOT.glob("tests/conf/**/*.yaml")]
               for m in re.findall(r"_target_: (bnsweep\.[\w.]+)", p.read_text())}  # fmt: skip
    assert "bnsweep.data.MNISTDataModule" in targets and len(targets) > 20
    for target in sorted(targets):
        assert callable(get_object(target)), target


def test_a_run_recorded_before_a_target_moved_still_resumes():
    from bnsweep.config.keys import MOVED
    from bnsweep.run.folders import comparable

    for old, new in MOVED.items():
        before = {"model": {"_target_": old, "name": "resnet18"}, "seed": 0}
        now = {"model": {"_target_": new, "name": "resnet18"}, "seed": 0}
        assert comparable(before) == comparable(now)
        assert before["model"]["_target_"] == old  # the record read is left as it was
        assert comparable({**now, "model": {**now["model"], "name": "resnet34"}}) != comparable(before)


def test_every_command_the_docs_give_names_a_file_that_exists():
    """A restructuring moved modules, and the README's own-network commands followed them to
    paths that never were scripts (~/bnsweep/run/training.py): every `python X.py` in the docs
    names one of the clone's entry scripts (a ~/bnsweep/ or ../../ prefix is the clone's root), and
    every `python -m bnsweep.…` a module that exists."""
    import re

    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    docs += sorted((ROOT / "examples").rglob("*.md"))
    wrong = []
    for doc in docs:
        text = doc.read_text()
        for script in re.findall(r"python3? ((?:~/bnsweep/|\.\./\.\./)?[\w/.-]+\.py)\b", text):
            relative = re.sub(r"^(~/bnsweep/|\.\./\.\./)", "", script)
            if not (ROOT / relative).is_file():
                wrong.append(f"{doc.relative_to(ROOT)}: python {script}")
        for module in re.findall(r"python3? -m (bnsweep[\w.]*)", text):
            path = ROOT / module.replace(".", "/")
            if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
                wrong.append(f"{doc.relative_to(ROOT)}: python -m {module}")
    assert not wrong, wrong

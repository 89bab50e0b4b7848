"""The manual: the README a front door of at most 15 KB whose links all land, the docs site builds
with ``mkdocs build --strict`` (a broken link, a missing anchor or a page outside the nav fails),
and the configuration reference is what conf/'s comments say, as ``--help`` reads them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

README = ROOT / "README.md"


def test_the_readme_is_a_front_door_of_at_most_15_kb():
    text = README.read_text()
    assert len(text.encode()) <= 15 * 1024, len(text.encode())
    # the two commands the product card promises, as they are pasted
    assert "pip install -e . && python train.py model=lenet_fc_bn2" in text
    assert 'pip install -e ".[test]" && ruff check . && pytest' in text


def test_every_link_of_the_readme_lands():
    """Every relative link and image of the README names a file of the clone, and an anchor one
    of that page's headings (as GitHub and mkdocs make them: lower case, spaces to hyphens)."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", README.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        page = ROOT / path
        if not page.exists():
            broken.append(target)
        elif anchor and anchor not in _anchors(page):
            broken.append(target)
    assert not broken, broken


def _anchors(page: Path) -> set[str]:
    out = set()
    for heading in re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).strip().replace(" ", "-")
        out.add(slug)
    return out


def test_the_configuration_reference_is_generated_from_conf():
    """docs/reference/configuration.md is what ``python -m bnsweep.config.reference`` writes
    today: a key added to conf/ or a comment changed shows in --help and on the page alike."""
    from bnsweep.config.reference import PAGE, reference_markdown

    assert PAGE.read_text() == reference_markdown(), (
        "docs/reference/configuration.md is stale: run python -m bnsweep.config.reference"
    )


def test_the_reference_lists_every_option_and_key_that_help_lists():
    """Every option of every group and every key --help shows for the defaults and for each
    bn option is on the reference page, with the default --help gives."""
    from bnsweep.config.help import help_text

    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    for argv in ([], *([f"bn={p.stem}"] for p in sorted((ROOT / "conf" / "bn").glob("*.yaml")))):
        text = help_text("sweep", argv)
        keys = re.findall(r"^  (\S+?)=(\S*)", text.split("Keys (key=value)")[1], flags=re.M)
        options = re.findall(r"^    [* ](\w+) ", text, flags=re.M)
        assert keys and options
        for key, default in keys:
            assert f"| `{key}` | `{default}" in page, (argv, key, default)
        for option in options:
            assert re.search(rf"^### `[\w/]+={option}`$", page, flags=re.M), option


def test_a_key_added_to_conf_reaches_the_reference(tmp_path):
    """The page follows conf/: a key of a copied conf/ with a comment appears, with its default
    and its comment (so a stale page is noticed by the test above)."""
    import shutil

    from bnsweep.config.reference import reference_markdown

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    path = conf / "bn" / "window.yaml"
    path.write_text(path.read_text() + "shrink: 0.5   # a key made up for this test\n")
    page = reference_markdown(conf)
    assert "| `bn.shrink` | `0.5` | a key made up for this test |" in page
    assert "bn.shrink" not in reference_markdown()


def test_the_docs_site_builds_strictly(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    for page in ("index.html", "reference/configuration/index.html",
                 "how-to/troubleshooting/index.html", "explanation/studies/index.html"):  # fmt: skip
        assert (tmp_path / "site" / page).is_file(), page
    studies = (tmp_path / "site" / "explanation" / "studies" / "index.html").read_text()
    assert "bn_placement/val_acc.png" in studies  # the figures came along
    assert (tmp_path / "site" / "results" / "bn_placement" / "val_acc.png").is_file()

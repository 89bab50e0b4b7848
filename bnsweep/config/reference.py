"""The configuration reference of the docs site (docs/reference/configuration.md), written from
the comments of conf/ by the same readers as ``--help`` (bnsweep.config.help), so the page and
``--help`` never say different things. ``python -m bnsweep.config.reference`` rewrites the page;
tests/test_docs.py checks that the committed page is what this writes."""

from __future__ import annotations

import sys
from pathlib import Path

from bnsweep.config.cli import CONF
from bnsweep.config.help import (
    SWEEP_GROUPS,
    _comments,
    _global,
    key_descriptions,
    option_files,
    option_text,
)

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "configuration.md"
# Hydra's own groups that conf/ adds options to
HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or " "


def _header(path: Path) -> str:
    """An option's top comment as Markdown: the ``--help`` text (``option_text``) kept in its
    paragraphs (a bare ``#`` line between them) and list items (``# - …``)."""
    blocks: list[list[str]] = [[]]
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# @package"):
            continue
        if not line.strip("# "):
            blocks.append([])
        elif line.lstrip("#").strip().startswith("- ") and blocks[-1]:
            blocks.append([line])
        else:
            blocks[-1].append(line)
    texts = [_comments(b) for b in blocks if b]
    return "\n\n".join(t if t.endswith((".", ")", ":")) else t + "." for t in texts)


def _keys_table(rows: list[tuple[str, str, str]]) -> list[str]:
    if not rows:
        return ["No keys of its own.", ""]
    out = ["| key | default | what it is |", "|---|---|---|"]
    out += [f"| `{k}` | `{_cell(d)}` | {_cell(t)} |" for k, d, t in rows]
    return [*out, ""]


def _option_keys(group: str, path: Path) -> list[tuple[str, str, str]]:
    """The keys an option sets (its own file's, not those of the options it builds on); a
    Hydra group's keys under ``hydra.<group>.``, a global option's (a study) by their own name."""
    if group.startswith("hydra/"):
        return key_descriptions(path, f"hydra.{group.split('/', 1)[1]}.")
    rows = key_descriptions(path, "" if _global(path) else f"{group}.")
    return [r for r in rows if not r[0].startswith(("hydra.", "defaults"))]


def reference_markdown(conf: Path = CONF) -> str:
    lines = [
        "# Configuration reference",
        "",
        "<!-- written by `python -m bnsweep.config.reference` from the comments of conf/, the",
        "     source `--help` reads; edit conf/, not this page (tests/test_docs.py checks it) -->",
        "",
        "Every config group, its options and every key they set, with its default and what it is,",
        "read from the comments of `conf/` as `python train.py --help` and `python sweep.py --help`",
        "read them. Any key is set on the command line as `key=value`; a group's option as",
        "`group=option`. `python train.py group=option --help` lists the keys of the options chosen;",
        "`--cfg job` prints the composed config.",
        "",
    ]
    for name, title in (("train.yaml", "train.py and sweep.py"), ("sweep.yaml", "sweep.py only")):
        lines += [f"## Top-level keys: {title}", "", f"From `conf/{name}`.", ""]
        lines += _keys_table([r for r in key_descriptions(conf / name)
                              if not r[0].startswith(("hydra", "defaults"))])  # fmt: skip
    for group in (*SWEEP_GROUPS, *HYDRA_GROUPS):
        folder = conf / group
        lines += [f"## `{group}`", ""]
        for path in sorted(folder.glob("*.yaml")):
            lines += [f"### `{group}={path.stem}`", ""]
            if option_text(path):
                lines += [_header(path), ""]
            bases = [p.stem for p in option_files(folder, path.stem)[1:]]
            if bases:
                lines += [f"Builds on {', '.join(f'`{b}`' for b in bases)} and takes its keys.", ""]
            lines += _keys_table(_option_keys(group, path))
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    target = Path(argv[0]) if argv else PAGE
    target.write_text(reference_markdown())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

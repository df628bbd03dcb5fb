"""Every ```python block of README.md and docs/*.md runs, so the documentation cannot go stale.

Blocks of one file run in order in one namespace, in a temporary directory. A block whose first line is
``# not run`` is skipped (e.g. examples that train for minutes); one whose first line is ``# file: NAME`` is
written to NAME (e.g. a model file that later blocks load) instead of being run.
"""
import re
from pathlib import Path

import matplotlib
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_blocks(path):
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    return [b for b in blocks if not b.lstrip().startswith("# not run")]


@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_documentation_examples_run(path, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    # W&B's examples start its service, which gets 90 s by default; a loaded machine can miss that.
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3600")
    for name in ("examples", "data"):  # docs may name repository files by relative path
        (tmp_path / name).symlink_to(REPO / name)
    namespace = {"__name__": "__docs__"}
    for block in python_blocks(path):
        first = block.lstrip().splitlines()[0]
        if first.startswith("# file:"):
            (tmp_path / first.split(":", 1)[1].strip()).write_text(block)
            continue
        exec(compile(block, str(path.relative_to(REPO)), "exec"), namespace)

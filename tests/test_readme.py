"""The README's Python code blocks run as written, in order, in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    proc = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=README.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'accuracy'" in proc.stdout  # the quick start's evaluate() printed its result

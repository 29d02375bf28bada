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


def shell_commands(text: str) -> list[list[str]]:
    """The commands of the README's ```bash blocks, each as argv (continuation lines
    joined, ``&&`` chains split)."""
    import shlex  # noqa: PLC0415

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            for part in filter(None, (p.strip() for p in line.split("&&"))):
                commands.append(shlex.split(part))
    return commands


def test_readme_shell_blocks_run(tmp_path):
    """Every shell command in the README: ``gpunet`` commands run as written (in a
    scratch directory) and succeed; ``gpunet bench`` (minutes) is parsed by the CLI
    instead; an install names extras that exist; the test command is the one CI runs."""
    from gpunet.cli import build_parser  # noqa: PLC0415

    commands = shell_commands(README.read_text())
    assert commands, "the README has no shell example"
    root = README.parent
    pyproject = (root / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = re.findall(r"^([\w-]+) = ", section, flags=re.M)
    assert "data" in extras and "test" in extras
    ran = []
    for argv in commands:
        if argv[:4] == ["python", "-m", "pip", "install"]:
            for target in argv[4:]:
                names = re.fullmatch(r"-e|\.(?:\[([\w,-]+)\])?|[\w.=<>-]+", target)
                assert names, f"unexpected install target {target!r}"
                for extra in filter(None, (names.group(1) or "").split(",")):
                    assert extra in extras, f"the README installs a missing extra {extra!r}"
        elif argv == ["python", "-m", "pytest"]:
            assert "python -m pytest" in (root / ".ci" / "run").read_text()
        elif argv[:2] == ["gpunet", "bench"]:
            build_parser().parse_args(argv[1:])  # exits 2 on an unknown option
        elif argv[0] == "gpunet":
            proc = subprocess.run(
                [sys.executable, "-m", "gpunet.cli", *argv[1:], "--no-progress"]
                if argv[1] == "train"
                else [sys.executable, "-m", "gpunet.cli", *argv[1:]],
                capture_output=True,
                text=True,
                timeout=600,
                cwd=tmp_path,
            )
            assert proc.returncode == 0, f"{' '.join(argv)}:\n{proc.stderr[-3000:]}"
            ran.append(argv[1])
            if argv[1:] == ["train", "--dataset", "mnist1d"]:  # its recipe, as the README says
                accuracy = float(re.search(r"test accuracy ([0-9.]+)", proc.stdout).group(1))
                assert accuracy >= 0.65, proc.stdout[-2000:]
        else:
            raise AssertionError(f"the README shows a command this test does not know: {argv}")
    assert "train" in ran

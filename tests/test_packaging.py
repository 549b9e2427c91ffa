"""The conda environment and pyproject declare the same dependencies; the README commands exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_names() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in meta["dependencies"] + meta["optional-dependencies"]["dev"]}


def _conda_names() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names: set[str] = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            names |= {_name(d) for d in dep["pip"] if not d.startswith("-")}
        elif _name(dep) not in ("python", "pip"):
            names.add(_name(dep))
    return names


def test_environment_yml_matches_pyproject() -> None:
    py, conda = _pyproject_names(), _conda_names()
    assert py - conda == set(), f"in pyproject but not environment.yml: {sorted(py - conda)}"
    assert conda - py == set(), f"in environment.yml but not pyproject: {sorted(conda - py)}"


def test_readme_starts_with_demo_and_test_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks = [ln for ln in lines[:30] if ln.startswith(("python3 ", ".venv/"))]
    assert any("lcstack demo" in b for b in blocks), "README must open with the demo command"
    test_cmds = [b for b in blocks if "pytest" in b]
    assert test_cmds, "README must give the test command"
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmds[0] in ci, ".ci/run must run exactly the README's test command"

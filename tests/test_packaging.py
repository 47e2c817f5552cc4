"""Packaging that keeps building: the SPDX license with its file, one version, the wheel check in
CI, and the changelog and release checklist linked from the README. (The build itself, its log
and the installed wheel are `.ci/wheel-check`'s, which `.ci/run` runs.)"""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from click.testing import CliRunner

import galleryvis
from galleryvis.cli import main

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_license_is_an_spdx_expression_with_its_file() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "galleryvis contributors" in text
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))  # SPDX replaces them
    (setuptools,) = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    low = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools)
    assert low and int(low[1]) >= 77, "SPDX license expressions need setuptools>=77"


def test_the_version_has_one_source() -> None:
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "galleryvis.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", galleryvis.__version__)
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == f"galleryvis, version {galleryvis.__version__}\n"


def test_ci_runs_the_wheel_check_after_the_quick_start() -> None:
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert run[-1] == ".ci/wheel-check"
    check = ROOT / ".ci" / "wheel-check"
    assert os.access(check, os.X_OK)
    text = check.read_text(encoding="utf-8")
    for step in ("-m build", "twine check --strict", "-m venv", "galleryvis build"):
        assert step in text, step
    assert "--system-site-packages" not in text and " -e " not in text  # the wheel, alone


def test_the_changelog_and_the_release_checklist_are_linked() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", changelog, re.M)
    assert sections and sections[0] == "[Unreleased]"
    releasing = (ROOT / "docs" / "releasing.md").read_text(encoding="utf-8")
    for step in ("git tag", "python -m build", "twine check", "twine upload", "init --github-pages", "CHANGELOG.md"):
        assert step in releasing, step
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](CHANGELOG.md)" in readme and "](docs/releasing.md)" in readme


def test_every_subpackage_is_in_the_wheel() -> None:
    """pyproject lists the packages by name: a new folder of the package must be added there,
    or the wheel installs without it (``.ci/wheel-check`` would find out only at the end of CI)."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "galleryvis").rglob("__init__.py")}
    assert found - listed == set(), f"pyproject.toml's packages miss {sorted(found - listed)}"

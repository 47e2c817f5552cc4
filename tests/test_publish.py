"""`galleryvis init --github-pages`: every file it writes is a valid GitHub workflow (the schema
check-jsonschema vendors, offline) and pins what it installs; bad --from-git values are one-line
errors that write nothing."""
from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import galleryvis
from galleryvis.cli import MANIFEST_NAME, main
from galleryvis.render.publish import WORKFLOW_PATH, git_requirement

PIN = f"galleryvis=={galleryvis.__version__}"
#: init's arguments -> what its workflow installs
VARIANTS = {
    (): PIN,
    ("--from-git", "https://github.com/someone/galleryvis@v0.1.0"): "git+https://github.com/someone/galleryvis@v0.1.0",
    ("--from-git", "git+ssh://git@github.com/someone/galleryvis.git@3f2a9c1"):
        "git+ssh://git@github.com/someone/galleryvis.git@3f2a9c1",
}


def _init(folder: Path, *args: str) -> tuple[int, str]:
    """`galleryvis init ARGS` run in ``folder``: exit code, output."""
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(folder):
        result = CliRunner().invoke(main, ["init", *args])
    return result.exit_code, result.output


def _installs(workflow: dict) -> list[str]:
    """The `pip install` commands of every step of every job."""
    runs = [step.get("run", "") for job in workflow["jobs"].values() for step in job.get("steps", [])]
    return [line.strip() for run in runs for line in run.splitlines() if "pip install" in line]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], Path]:
    """A folder per variant, each holding what `init --github-pages [...]` wrote."""
    out = {}
    for i, args in enumerate(VARIANTS):
        folder = tmp_path_factory.mktemp(f"init{i}")
        code, output = _init(folder, "--github-pages", *args)
        assert code == 0, output
        out[args] = folder
    return out


def test_init_writes_the_manifest_and_the_workflow_only(written: dict[tuple[str, ...], Path]) -> None:
    for folder in written.values():
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert files == {MANIFEST_NAME, WORKFLOW_PATH}


def test_every_written_workflow_validates_against_the_github_schema(written: dict[tuple[str, ...], Path]) -> None:
    workflows = [str(p) for folder in written.values() for p in (folder / ".github").rglob("*") if p.is_file()]
    assert len(workflows) == len(VARIANTS)
    check = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                            *workflows], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("args", list(VARIANTS), ids=["pypi", "git-https", "git-ssh"])
def test_the_workflow_pins_what_it_installs(written: dict[tuple[str, ...], Path], args: tuple[str, ...]) -> None:
    text = (written[args] / WORKFLOW_PATH).read_text(encoding="utf-8")
    workflow = yaml.safe_load(text)
    assert _installs(workflow) == [
        f"pip install '{VARIANTS[args]}' --extra-index-url https://download.pytorch.org/whl/cpu"]
    assert f"written by galleryvis {galleryvis.__version__}" in text
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step]
    assert uses and all(re.fullmatch(r"actions/[a-z-]+@v\d+", u) for u in uses), uses


@pytest.mark.parametrize("source, requirement", [
    ("https://github.com/o/r", "git+https://github.com/o/r"),
    ("https://github.com/o/r.git@main", "git+https://github.com/o/r.git@main"),
    ("git+https://gitlab.example.org:8443/group/sub/r@release/1.2", "git+https://gitlab.example.org:8443/group/sub/r@release/1.2"),
    ("ssh://git@github.com/o/r.git@v1.0.0", "git+ssh://git@github.com/o/r.git@v1.0.0"),
])
def test_git_requirement_is_pips_vcs_form(source: str, requirement: str) -> None:
    assert git_requirement(source) == requirement


@pytest.mark.parametrize("source", [
    "", "galleryvis", "github.com/o/r", "ftp://h/o/r", "http://github.com/o/r", "file:///home/me/r",
    "https://github.com", "https://github.com/", "https://github.com/o/r@", "https://github.com/o/r@a..b",
    "https://github.com/o/r@-rf", "https://github.com/o/r@x.lock", "https://github.com/o/r@a//b",
    "https://github.com:http/o/r", "https://user:token@github.com/o/r", "https://token@github.com/o/r",
    "https://github.com/o/r#egg=galleryvis", "https://github.com/o/r?ref=x", "https://github.com/o/r main",
    "https://github.com/o/r'; rm -rf ~", "https://github.com/o/r\n",
])
def test_a_bad_from_git_is_a_one_line_error_and_writes_nothing(tmp_path: Path, source: str) -> None:
    code, output = _init(tmp_path, "--github-pages", "--from-git", source)
    assert code == 2
    assert output.startswith("error: --from-git: ") and output.count("\n") == 1, output
    assert not any(tmp_path.rglob("*"))


def test_from_git_needs_github_pages(tmp_path: Path) -> None:
    code, output = _init(tmp_path, "--from-git", "https://github.com/o/r@v1")
    assert code == 2 and output.count("\n") == 1 and "--github-pages" in output
    assert not any(tmp_path.rglob("*"))


def test_an_existing_workflow_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    workflow = tmp_path / WORKFLOW_PATH
    workflow.parent.mkdir(parents=True)
    workflow.write_text("mine\n")
    code, output = _init(tmp_path, "--github-pages")
    assert code == 2 and "exists" in output
    assert workflow.read_text() == "mine\n" and not (tmp_path / MANIFEST_NAME).exists()

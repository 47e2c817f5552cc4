"""The README is the way in: it links every docs page, and no relative link in the docs is broken."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")
PAGES = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])


def test_the_readme_links_every_docs_page_and_the_bench() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = set(LINK.findall(readme))
    for page in [*(ROOT / "docs").glob("*.md"), ROOT / "bench" / "README.md"]:
        assert page.relative_to(ROOT).as_posix() in targets, f"README.md does not link {page.relative_to(ROOT)}"


def test_the_readme_reads_in_two_minutes() -> None:
    """About 400 words a minute: the long tables live in docs/ and bench/README.md."""
    words = len((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert words <= 1200, f"README.md has {words} words"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        assert (page.parent / path).exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"

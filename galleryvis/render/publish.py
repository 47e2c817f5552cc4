"""Publishing: the GitHub Actions workflow that builds the gallery and deploys it to Pages, and
the pinned galleryvis it installs (this version from PyPI, or a git source)."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from galleryvis import __version__

#: where ``galleryvis init --github-pages`` writes the workflow
WORKFLOW_PATH = ".github/workflows/galleryvis-pages.yml"

_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/@%+-]+")
_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")

_WORKFLOW = """\
# Written by `galleryvis init --github-pages`: builds the gallery on every push to main
# and publishes site/ with GitHub Pages (Settings -> Pages -> Source: GitHub Actions).
# It installs @REQUIREMENT@ (written by galleryvis @VERSION@); to change that, edit the
# `pip install` line: galleryvis==X.Y.Z from PyPI, or git+URL@REF for a tag or commit.
name: gallery
on:
  push:
    branches: [main]
  workflow_dispatch:
permissions:
  contents: read
  pages: write
  id-token: write
concurrency:
  group: pages
  cancel-in-progress: true
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - uses: actions/cache@v4
        with:
          path: .galleryvis-cache
          key: galleryvis-${{ hashFiles('galleryvis.toml') }}
          restore-keys: galleryvis-
      - run: pip install '@REQUIREMENT@' --extra-index-url https://download.pytorch.org/whl/cpu
      - run: galleryvis build galleryvis.toml
      - uses: actions/upload-pages-artifact@v3
        with:
          path: site
  deploy:
    needs: build
    runs-on: ubuntu-latest
    environment:
      name: github-pages
      url: ${{ steps.deployment.outputs.page_url }}
    steps:
      - id: deployment
        uses: actions/deploy-pages@v4
"""


def pages_workflow(requirement: str | None = None) -> str:
    """The workflow YAML (build with the CPU wheels of torch, cache between runs, deploy site/)
    installing ``requirement``: a :func:`git_requirement`, by default ``galleryvis==<this version>``."""
    requirement = requirement or f"galleryvis=={__version__}"
    return _WORKFLOW.replace("@REQUIREMENT@", requirement).replace("@VERSION@", __version__)


def git_requirement(source: str) -> str:
    """pip's ``git+URL[@REF]`` for ``--from-git URL[@REF]`` (an https:// or ssh:// repository URL,
    ``git+`` optional; REF a tag, branch or commit, else the default branch).
    ValueError, in one line, when ``source`` is none of these."""
    url = source.removeprefix("git+")
    if not _URL_CHARS.fullmatch(url):
        raise ValueError(f"{source!r} is no repository URL (letters, digits and ._~:/@%+- only, no spaces, ? or #)")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        raise ValueError(f"{source!r}: the host's port is no number") from None
    if parts.scheme not in ("https", "ssh") or not parts.hostname:
        raise ValueError(f"{source!r}: expected https://HOST/OWNER/REPO[@REF] or ssh://git@HOST/OWNER/REPO[@REF]")
    if parts.password or (parts.username and parts.scheme == "https"):
        raise ValueError(f"{source!r} carries credentials, and the workflow file is committed: leave them out")
    path, at, ref = parts.path.rpartition("@") if "@" in parts.path else (parts.path, "", "")
    if not path.strip("/"):
        raise ValueError(f"{source!r} names no repository after the host")
    if at and not (_REF.fullmatch(ref) and ".." not in ref and "//" not in ref
                   and not ref.endswith((".", "/", ".lock"))):
        raise ValueError(f"{source!r}: {ref!r} after '@' is no git tag, branch or commit")
    return f"git+{parts.scheme}://{parts.netloc}{path}{at}{ref}"

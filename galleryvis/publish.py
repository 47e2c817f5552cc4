"""Publishing: the GitHub Actions workflow that builds the gallery and deploys it to Pages."""
from __future__ import annotations

_WORKFLOW = """\
# Written by `galleryvis init --github-pages`: builds the gallery on every push to main
# and publishes site/ with GitHub Pages (Settings -> Pages -> Source: GitHub Actions).
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
      - run: pip install galleryvis --extra-index-url https://download.pytorch.org/whl/cpu
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


def pages_workflow() -> str:
    """The workflow YAML (build with the CPU wheels of torch, cache between runs, deploy site/)."""
    return _WORKFLOW

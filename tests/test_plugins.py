"""Technique plug-ins: a module named in the manifest, or an entry point, adds gallery rows."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from galleryvis import registry
from galleryvis.config.manifest import ManifestError, load_manifest
from galleryvis.build.pipeline import Options, build

DOC = Path(__file__).resolve().parent.parent / "docs" / "adding-a-technique.md"
PHOTOS = Path(__file__).resolve().parent.parent / "input_images"


def plugin_example() -> str:
    """The first python block after the docs' heading that mentions plugins."""
    text = DOC.read_text(encoding="utf-8")
    heading = re.search(r"^#+ .*plugin.*$", text, flags=re.M | re.I)
    assert heading is not None, "docs/adding-a-technique.md has no heading with 'plugin'"
    block = re.search(r"```python\n(.*?)```", text[heading.end():], flags=re.S)
    assert block is not None
    return block.group(1)


def manifest(tmp_path: Path, plugins: str, technique: str) -> Path:
    (tmp_path / "cat.png").write_bytes((PHOTOS / "cat.png").read_bytes())
    path = tmp_path / "galleryvis.toml"
    path.write_text(f"""
[gallery]
title = "plugins"
plugins = {plugins}

[[images]]
path = "cat.png"

[[models]]
name = "resnet18"
weights = "none"
size = 64

[[techniques]]
name = "{technique}"

[[techniques]]
name = "vanilla"
""", encoding="utf-8")
    return path


def test_the_documented_plugin_file_adds_a_row_with_its_own_title_and_page(tmp_path: Path) -> None:
    (tmp_path / "my_techniques.py").write_text(plugin_example(), encoding="utf-8")
    path = manifest(tmp_path, '["my_techniques.py"]', "abs_saliency")
    summary = build(load_manifest(path), Options(quiet=True, cache_dir=tmp_path / "cache"))
    assert (summary.computed, summary.failed) == (2, 0)
    tech = registry.get("abs_saliency")
    assert (tech.title, tech.kind, tech.needs) == ("Absolute Saliency", "cam", frozenset({"input_grad"}))
    site = tmp_path / "site"
    pages = "".join(p.read_text(encoding="utf-8") for p in site.rglob("*.html"))
    assert "Absolute Saliency" in pages and "largest absolute gradient of the target logit" in pages
    assert (site / "img" / "resnet18" / "cat" / "abs-saliency-heatmap.webp").is_file()
    assert "largest absolute gradient" in (site / "technique-abs-saliency.html").read_text(encoding="utf-8")
    # parsing the manifest again imports the file once: nothing is registered twice
    load_manifest(path)


def test_an_importable_module_and_an_entry_point_are_plugins_too(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    code = plugin_example().replace('"abs_saliency"', '"{name}"').replace("Absolute Saliency", "{title}")
    pkg = tmp_path / "pkgs"
    pkg.mkdir()
    (pkg / "named_plugin.py").write_text(code.format(name="named_saliency", title="Named"), encoding="utf-8")
    (pkg / "ep_plugin.py").write_text(code.format(name="ep_saliency", title="From an entry point"), encoding="utf-8")
    dist = pkg / "galleryvis_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: galleryvis-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[galleryvis.plugins]\nmine = ep_plugin\n")
    monkeypatch.syspath_prepend(str(pkg))
    load_manifest(manifest(tmp_path, '["named_plugin"]', "ep_saliency"))
    assert registry.get("named_saliency").title == "Named"
    assert registry.get("ep_saliency").title == "From an entry point"
    monkeypatch.delitem(sys.modules, "named_plugin")
    monkeypatch.delitem(sys.modules, "ep_plugin")


@pytest.mark.parametrize("plugins, message", [
    ('["missing_plugin_module"]', "cannot import plug-in 'missing_plugin_module'"),
    ('["nowhere.py"]', "plug-in file 'nowhere.py' does not exist"),
    ('"my_techniques"', "expected a list of module names or .py files"),
])
def test_a_bad_plugin_is_a_one_line_manifest_error(tmp_path: Path, plugins: str, message: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(message)) as err:
        load_manifest(manifest(tmp_path, plugins, "vanilla"))
    assert "gallery.plugins" in str(err.value)


def test_the_documented_plugin_imports_only_public_names() -> None:
    import ast

    import galleryvis

    imports = [node for node in ast.walk(ast.parse(plugin_example())) if isinstance(node, ast.ImportFrom)]
    ours = [node for node in imports if (node.module or "").split(".")[0] == "galleryvis"]
    assert ours and all(node.module == "galleryvis" for node in ours)
    assert {alias.name for node in ours for alias in node.names} <= set(galleryvis.__all__)


def test_a_plugin_table_after_the_techniques_table_still_comes_first(tmp_path: Path) -> None:
    code = plugin_example().replace('"abs_saliency"', '"late_saliency"')
    (tmp_path / "late.py").write_text(code, encoding="utf-8")
    (tmp_path / "cat.png").write_bytes((PHOTOS / "cat.png").read_bytes())
    path = tmp_path / "galleryvis.toml"
    path.write_text('[[techniques]]\nname = "late_saliency"\n\n[[models]]\nname = "resnet18"\n\n'
                    '[[images]]\npath = "cat.png"\n\n[gallery]\nplugins = ["late.py"]\n', encoding="utf-8")
    assert path.read_text().index("[[techniques]]") < path.read_text().index("[gallery]")
    assert [t.name for t in load_manifest(path).techniques] == ["late_saliency"]


def test_a_plugin_that_reuses_a_built_in_name_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "clash.py").write_text(plugin_example().replace('"abs_saliency"', '"vanilla"'), encoding="utf-8")
    with pytest.raises(ManifestError) as err:
        load_manifest(manifest(tmp_path, '["clash.py"]', "gradcam"))
    (line,) = err.value.errors
    assert line.startswith("galleryvis.toml: gallery.plugins: plug-in 'clash.py' failed to import: ")
    assert "technique 'vanilla' is registered twice (galleryvis.attribution." in line
    assert registry.get("vanilla").fn.__module__.startswith("galleryvis.attribution.")  # the built-in stays

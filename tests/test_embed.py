"""``galleryvis embed``: the marker parser, the embedded tables, and the command end to end
(replace, idempotent, refuse: exit code 2, one line, the file untouched byte for byte)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import markdown
import pytest
from click.testing import CliRunner

from galleryvis.cli import main
from galleryvis.render.embed import EmbedError, embed, read, replace, section, sections, site_prefix
from galleryvis.render.records import Gallery, Prediction, Variant
from galleryvis.render import MD_WIDTH, markdown_tables

from gallery_fixture import make_gallery

PHOTOS = Path(__file__).resolve().parent.parent / "input_images"
OPEN, CLOSE = "<!-- galleryvis:gallery -->", "<!-- /galleryvis:gallery -->"
DOC = f"# Title\n\nIntro text.\n{OPEN}\nold table\n{CLOSE}\nAfter, no newline at the end"

_PICTURE = re.compile(r'<a href="([^"]+)"><img src="([^"]+)" width="(\d+)" alt="[^"]*"></a>')


# -- the parser ------------------------------------------------------------------------------
def test_balanced_sections_are_found_by_name():
    text = f"a\n{OPEN}\nx\n{CLOSE}\n<!-- galleryvis:models -->\n<!-- /galleryvis:models -->\n"
    found = sections(text, "F.md")
    assert [(s.name, s.line) for s in found.values()] == [("gallery", 2), ("models", 5)]
    assert text[found["gallery"].start:found["gallery"].end] == "x\n"
    assert found["models"].start == found["models"].end


@pytest.mark.parametrize("text, line, words", [
    (f"a\n{OPEN}\nx\n", 2, "never closed"),
    (f"a\nb\n{CLOSE}\n", 3, "never opened"),
    (f"{OPEN}\n<!-- galleryvis:other -->\n<!-- /galleryvis:other -->\n{CLOSE}\n", 2, "cannot nest"),
    (f"{OPEN}\n<!-- galleryvis:gallery -->\n{CLOSE}\n", 2, "cannot nest"),
    (f"<!-- galleryvis:other -->\n{OPEN}\n<!-- /galleryvis:other -->\n{CLOSE}\n", 2, "cannot nest"),
    (f"{OPEN}\n<!-- /galleryvis:other -->\n", 2, "cannot nest or overlap"),
    (f"{OPEN}\n{CLOSE}\ntext\n{OPEN}\n{CLOSE}\n", 4, "a second section 'gallery' (the first opens on line 1)"),
])
def test_bad_markers_name_file_and_line_in_one_line(text, line, words):
    with pytest.raises(EmbedError) as err:
        sections(text, "docs/F.md")
    message = str(err.value)
    assert message.startswith(f"docs/F.md:{line}: ") and words in message and "\n" not in message


def test_a_missing_section_is_one_line_naming_the_file_and_the_markers():
    with pytest.raises(EmbedError, match=r"^F\.md: no section 'models'.*galleryvis:models") as err:
        section(DOC, "models", "F.md")
    assert "\n" not in str(err.value)


def test_a_section_name_no_marker_can_hold_is_refused():
    with pytest.raises(EmbedError, match="section name 'my table'"):
        section(DOC, "my table", "F.md")


def test_markers_in_code_or_inside_a_line_are_text():
    text = (f"Write `{OPEN}` on a line of its own:\n\n```markdown\n{OPEN}\n```\n\n~~~~\n{CLOSE}\n```\n~~~~\n"
            f"  {OPEN}  \nx\n{CLOSE}\n")
    assert [(s.name, s.line) for s in sections(text, "F").values()] == [("gallery", 11)]


def test_replace_keeps_every_byte_outside_the_section_and_adds_blank_lines():
    new = replace(DOC, "gallery", "| a |\n| --- |\n", "F")
    head, tail = DOC.split("old table\n")
    assert new == head + "\n| a |\n| --- |\n\n" + tail
    assert new.endswith("After, no newline at the end")


def test_replace_writes_the_files_crlf_and_is_idempotent():
    doc = DOC.replace("\n", "\r\n")
    once = replace(doc, "gallery", "line 1\nline 2", "F")
    assert once.count("\n") == once.count("\r\n") and "line 1\r\nline 2\r\n" in once
    assert once.startswith("# Title\r\n\r\nIntro text.\r\n" + OPEN + "\r\n\r\nline 1")
    assert replace(once, "gallery", "line 1\nline 2", "F") == once


def test_other_sections_stay_as_they_are():
    doc = f"{OPEN}\n{CLOSE}\n<!-- galleryvis:other -->\nkeep me\n<!-- /galleryvis:other -->\n"
    assert replace(doc, "other", "new", "F") == doc.replace("keep me\n", "\nnew\n\n")
    assert replace(doc, "gallery", "new", "F").endswith("<!-- galleryvis:other -->\nkeep me\n<!-- /galleryvis:other -->\n")


@pytest.mark.parametrize("file, site, prefix", [
    ("README.md", "site", "site/"),
    ("docs/card.md", "site", "../site/"),
    ("README.md", "my site/out", "my%20site/out/"),
])
def test_site_prefix_is_relative_to_the_files_folder(tmp_path, file, site, prefix):
    assert site_prefix(tmp_path / file, tmp_path / site) == prefix


def test_a_file_inside_the_site_folder_is_refused(tmp_path):
    with pytest.raises(EmbedError, match="inside the site folder"):
        site_prefix(tmp_path / "site" / "notes.md", tmp_path / "site")


def test_the_embedding_docs_show_markers_as_text():
    doc = Path(__file__).resolve().parent.parent / "docs" / "embedding.md"
    assert sections(read(doc), doc) == {}


def test_embed_writes_only_a_change_and_keeps_the_mode(tmp_path):
    file = tmp_path / "README.md"
    file.write_bytes(DOC.encode())
    file.chmod(0o664)
    assert embed(file, "gallery", "new")
    assert file.stat().st_mode & 0o777 == 0o664
    os.utime(file, ns=(1, 1))
    assert not embed(file, "gallery", "new")
    assert file.stat().st_mtime_ns == 1


def test_text_that_is_not_utf8_is_refused(tmp_path):
    file = tmp_path / "latin1.md"
    file.write_bytes(f"caf\xe9\n{OPEN}\n{CLOSE}\n".encode("latin-1"))
    with pytest.raises(EmbedError, match=r"latin1\.md: not UTF-8 text \(byte 3\)"):
        read(file)


# -- the tables ------------------------------------------------------------------------------
def _resolves(folder: Path, url: str) -> bool:
    return (folder / unquote(url)).is_file()


def test_tables_link_every_picture_relative_to_the_file_with_a_width(tmp_path):
    gallery = make_gallery(tmp_path / "site")
    (tmp_path / "docs").mkdir()
    text = markdown_tables(gallery, site_prefix(tmp_path / "docs" / "card.md", tmp_path / "site"), 120)
    pictures = _PICTURE.findall(text)
    assert len(pictures) == sum(len(c.variants) for c in gallery.cells) + len(gallery.images) * len(gallery.models) * 2
    assert {width for _, _, width in pictures} == {"120"} and text.count("<img ") == len(pictures)
    for url in [u for href, src, _ in pictures for u in (href, src)]:
        assert url.startswith("../site/") and _resolves(tmp_path / "docs", url), url
    assert ".html" not in text and "](" not in text and not re.search(r"(?<!\\)<(script|/script|em)", text)
    assert "Chelsea the cat.png · AlexNet" in text  # models side by side under each image
    assert text == markdown_tables(gallery, "../site/", 120)


def test_tables_are_the_gallery_md_grid_drawn_the_same_way(tmp_path):
    text = markdown_tables(make_gallery(tmp_path), "")
    assert {w for _, _, w in _PICTURE.findall(text)} == {str(MD_WIDTH)}
    tables = [block.splitlines() for block in text.split("\n\n") if block.startswith("|")]
    assert [t[0].split(" |")[0] for t in tables] == ["| Technique", "| Technique"]
    for table in tables:
        assert len({len(re.findall(r"(?<!\\)\|", line)) for line in table}) == 1
    assert "**Failed:** RuntimeError" in text and "ρ 0.900 ⚠" in text


def test_pages_are_linked_at_the_base_url_only(tmp_path):
    gallery = dataclasses.replace(make_gallery(tmp_path), base_url="https://example.org/gallery/")
    links = re.findall(r"\]\(([^)\s]*)\)", markdown_tables(gallery, "site/"))
    assert links and all(u.startswith("https://example.org/gallery/") and u.endswith(".html") for u in links)
    assert "https://example.org/gallery/technique-vanilla.html" in links


def test_records_survive_gallery_json(tmp_path):
    gallery = make_gallery(tmp_path)
    data = gallery.to_json()
    back = Gallery.from_dict(json.loads(data))
    assert back.to_json() == data
    assert json.loads(data)["summary"] == {}  # this build's counts are in build.json
    assert isinstance(back.cells[0].variants[0], Variant) and isinstance(back.models[0].predictions["cat"][0], Prediction)
    older = {k: v for k, v in json.loads(data).items() if k != "base_url"}
    assert Gallery.from_dict(older).base_url == ""  # a key the file lacks takes its default


# -- the command -----------------------------------------------------------------------------
MANIFEST = """
[[images]]
path = "cat.png"

[[models]]
name = "resnet18"
weights = "none"
size = 64

[[techniques]]
name = "vanilla"
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embedded")
    shutil.copy(PHOTOS / "cat.png", root / "cat.png")
    (root / "galleryvis.toml").write_text(MANIFEST)
    return root


def galleryvis(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def test_embed_replaces_the_section_then_changes_nothing(project):
    readme = project / "README.md"
    before = "# Project\r\n\r\n" + OPEN + "\r\n" + CLOSE + "\r\n\r\nMore.\r\n"
    readme.write_bytes(before.encode())
    result = galleryvis("embed", str(readme), "--manifest", str(project / "galleryvis.toml"), "-q")
    assert result.exit_code == 0, result.output
    after = readme.read_bytes().decode()
    assert after.startswith("# Project\r\n\r\n" + OPEN + "\r\n\r\n") and after.endswith(CLOSE + "\r\n\r\nMore.\r\n")
    assert after.count("\n") == after.count("\r\n")
    urls = [u for href, src, _ in _PICTURE.findall(after) for u in (href, src)]
    assert len(urls) == 2 * 3 and all(u.startswith("site/") and _resolves(project, u) for u in urls)
    rendered = markdown.markdown(after, extensions=["tables"])  # the blank lines make it a table
    assert rendered.count("<table>") == 1 and rendered.count("<img ") == 3

    # A second run: the build stamp answers (no torch imported) and the file keeps its bytes.
    again = subprocess.run([sys.executable, "-X", "importtime", "-m", "galleryvis", "embed", "README.md"],
                           cwd=project, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "unchanged since the last build" in again.stdout and "section 'gallery' unchanged" in again.stdout
    modules = {line.rsplit("|", 1)[-1].strip() for line in again.stderr.splitlines() if line.startswith("import time:")}
    assert "galleryvis.render.embed" in modules and not any(m == "torch" or m.startswith("torch.") for m in modules)
    assert readme.read_bytes().decode() == after


@pytest.mark.parametrize("text, where", [
    (f"intro\n{OPEN}\nno close\n", "bad.md:2: "),
    (f"{OPEN}\n<!-- galleryvis:inner -->\n<!-- /galleryvis:inner -->\n{CLOSE}\n", "bad.md:2: "),
    (f"{CLOSE}\n", "bad.md:1: "),
    ("no markers at all\n", "bad.md: "),
])
def test_embed_refuses_bad_markers_with_exit_2_before_building(tmp_path, text, where):
    shutil.copy(PHOTOS / "cat.png", tmp_path / "cat.png")
    (tmp_path / "galleryvis.toml").write_text(MANIFEST)
    bad = tmp_path / "bad.md"
    bad.write_bytes(text.encode())
    stat = bad.stat()
    result = galleryvis("embed", str(bad), "--manifest", str(tmp_path / "galleryvis.toml"))
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad.parent}/{where}"), result.output
    assert bad.read_bytes() == text.encode() and bad.stat().st_mtime_ns == stat.st_mtime_ns
    assert not (tmp_path / "site").exists()


def test_embed_refuses_a_file_inside_the_site_folder_before_the_build_replaces_it(tmp_path):
    shutil.copy(PHOTOS / "cat.png", tmp_path / "cat.png")
    (tmp_path / "galleryvis.toml").write_text(MANIFEST)
    notes = tmp_path / "site" / "notes.md"
    notes.parent.mkdir()
    notes.write_text(f"{OPEN}\n{CLOSE}\n")
    result = galleryvis("embed", str(notes), "--manifest", str(tmp_path / "galleryvis.toml"))
    assert result.exit_code == 2 and "inside the site folder" in result.output
    assert len(result.output.splitlines()) == 1 and notes.read_text() == f"{OPEN}\n{CLOSE}\n"

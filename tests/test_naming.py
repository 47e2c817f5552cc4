"""naming.py: slugs are safe, readable, deterministic and distinct; inside() never leaves root."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from galleryvis.naming import MAX_READABLE, inside, slug, unique_slugs

SAFE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def test_plain_names_stay_readable_without_a_hash() -> None:
    assert slug("Chelsea the cat.png") == "chelsea-the-cat-png"
    assert slug("resnet50") == "resnet50"
    assert slug("guided_backprop") == "guided-backprop"
    assert slug("  spaced   out  ") == "spaced-out"


def test_slug_is_deterministic() -> None:
    assert slug("Café au lait.jpg") == slug("Café au lait.jpg")


@pytest.mark.parametrize(
    "text",
    ["../../x.png", "/etc/passwd", "C:\\Windows\\x.png", "a\0b", "<script>alert(1)</script>.png",
     "..", ".", "", "....", ".hidden", "CON", "nul", "猫.png", "Egyptian cat (285)"],
)
def test_hostile_names_give_safe_slugs(text: str) -> None:
    s = slug(text)
    assert SAFE.fullmatch(s), s
    assert s.isascii() and not s.startswith(".") and ".." not in s


def test_dropped_characters_add_a_hash_that_keeps_names_apart() -> None:
    assert slug("../../x.png") != slug("x.png")
    assert slug("../../x.png").startswith("x-png-")
    assert slug("<script>alert(1)</script>.png").startswith("script-alert-1-script-png-")
    assert slug("café.png") != slug("cafe.png")
    assert slug("café.png").startswith("cafe-png-")
    assert slug("猫.png") != slug("犬.png")
    assert slug("猫") != slug("犬") != slug("")


def test_windows_device_names_are_not_produced() -> None:
    assert slug("CON") not in {"con", "CON"}
    assert slug("lpt1") != "lpt1"


def test_long_names_are_cut_and_stay_distinct() -> None:
    a, b = slug("x" * 200 + "a"), slug("x" * 200 + "b")
    assert a != b
    assert len(a) <= MAX_READABLE + 9


def test_unique_slugs_deduplicates_in_order() -> None:
    assert unique_slugs(["cat.png", "Cat.png", "cat.png"]) == ["cat-png", "cat-png-2", "cat-png-3"]


def test_unique_slugs_skips_suffixes_taken_by_other_names() -> None:
    out = unique_slugs(["a", "A", "a-2"])
    assert len(set(out)) == 3 and out[0] == "a" and out[2] == "a-2"


def test_inside_joins_relative_paths(tmp_path: Path) -> None:
    assert inside(tmp_path, "img/cat.png") == tmp_path / "img" / "cat.png"
    assert inside(tmp_path, "img/../cat.png") == tmp_path / "cat.png"


@pytest.mark.parametrize("rel", ["../x.png", "../../x.png", "img/../../x.png", "/etc/passwd", "a\0b"])
def test_inside_refuses_to_leave_root(tmp_path: Path, rel: str) -> None:
    with pytest.raises(ValueError):
        inside(tmp_path / "site", rel)


def test_inside_refuses_symlinks_out_of_root(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "escape").symlink_to(tmp_path)
    with pytest.raises(ValueError):
        inside(root, "escape/x.png")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_slug_is_always_a_safe_non_empty_component(text: str) -> None:
    s = slug(text)
    assert s and SAFE.fullmatch(s)
    assert "/" not in s and "\\" not in s and "\0" not in s and ".." not in s


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=8), max_size=12))
def test_unique_slugs_are_unique(names: list[str]) -> None:
    out = unique_slugs(names)
    assert len(out) == len(names) == len(set(out))

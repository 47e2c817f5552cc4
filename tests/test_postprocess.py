"""postprocess.py: raw maps -> RGB display variants, colormaps, deterministic PNGs."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from cmap import Colormap
from PIL import Image

from galleryvis.render import postprocess as pp

H, W = 12, 16
RNG = np.random.default_rng(0)
GRAD = RNG.normal(size=(3, H, W))
CAM = np.abs(RNG.normal(size=(1, H, W)))
IMAGE = Image.fromarray(RNG.integers(0, 256, (H, W, 3), dtype=np.uint8), "RGB")


def _keys(out: list[pp.Variant]) -> list[str]:
    return [key for key, _, _ in out]


def _assert_rgb(out: list[pp.Variant]) -> None:
    for key, label, img in out:
        assert label and img.mode == "RGB" and img.size == (W, H), key


# -- variants per kind ---------------------------------------------------------------------------
def test_gradient_variants_in_fixed_order() -> None:
    out = pp.variants("gradient", GRAD, IMAGE)
    assert _keys(out) == ["color", "saliency"]
    guided = pp.variants("gradient", GRAD, IMAGE, guided=True)
    assert _keys(guided) == ["color", "saliency", "positive", "negative"]
    _assert_rgb(guided)


def test_colored_gradient_clips_outliers_symmetrically_around_zero() -> None:
    color = np.asarray(dict((k, i) for k, _, i in pp.variants("gradient", GRAD, None))["color"], int)
    lim = np.percentile(np.abs(GRAD), 100 - pp.OUTLIER_PERC)
    expected = np.rint(np.clip(0.5 + GRAD / (2 * lim), 0, 1) * 255).transpose(1, 2, 0)
    assert np.array_equal(color, expected)


def _spread(img: Image.Image) -> float:
    """The 2nd-98th percentile spread of an image's luminance, in grey levels."""
    lum = np.asarray(img.convert("L"), float)
    return float(np.percentile(lum, 98) - np.percentile(lum, 2))


@pytest.mark.parametrize("kind,guided", [("gradient", True), ("signed", False)])
def test_one_outlier_does_not_wash_out_a_gradient_view(kind: str, guided: bool) -> None:
    g = np.random.default_rng(1).standard_t(2, size=(3, 64, 64)) * 1e-3  # heavy tails, as gradients
    g[0, 5, 5] = 1.0  # one pixel 1000x the rest: min-max scaling would leave the others grey
    for key, _, img in pp.variants(kind, g, None, guided=guided):
        assert _spread(img) >= 48, key


def test_outlier_perc_sets_the_clipped_share() -> None:
    g = np.linspace(-1, 1, 3 * 10 * 10).reshape(3, 10, 10)
    lim = dict(pp.limits("gradient", [g], outlier_perc=10))["color"][1]
    assert lim == pytest.approx(np.percentile(np.abs(g), 90))
    with pytest.raises(ValueError, match="outlier_perc"):
        pp.limits("gradient", [g], outlier_perc=100)


def test_a_shared_scale_keeps_a_weak_map_dark() -> None:
    strong, weak = CAM * 10, CAM
    shared = pp.limits("cam", [strong, weak])
    own = np.asarray(pp.variants("cam", weak, None)[0][2], int)
    on_shared = np.asarray(pp.variants("cam", weak, None, scale=shared)[0][2], int)
    assert own.max() == 255 and on_shared.max() <= 26


def test_positive_and_negative_saliency_split_the_sign() -> None:
    g = np.zeros((3, H, W))
    g[:, :, : W // 2] = 2.0
    g[:, :, W // 2 :] = -4.0
    out = {k: np.asarray(i) for k, _, i in pp.variants("gradient", g, None, guided=True)}
    assert (out["positive"][:, : W // 2] == 255).all() and (out["positive"][:, W // 2 :] == 0).all()
    assert (out["negative"][:, : W // 2] == 0).all() and (out["negative"][:, W // 2 :] == 255).all()


def _smilkov(g: np.ndarray) -> np.ndarray:
    s = np.abs(g).sum(axis=0)
    return np.clip((s - s.min()) / (np.percentile(s, 100 - pp.OUTLIER_PERC) - s.min()), 0, 1)


def test_saliency_follows_smilkov() -> None:
    for g in (GRAD, GRAD[:1]):  # three channels, and one
        got = np.asarray(dict((k, i) for k, _, i in pp.variants("gradient", g, None))["saliency"], int)[..., 0]
        assert got.shape == (H, W) and got.min() >= 0 and got.max() == 255
        assert np.array_equal(got, np.rint(_smilkov(g) * 255))


def test_cam_variants_and_overlay_blend() -> None:
    out = pp.variants("cam", CAM, IMAGE, alpha=0.25)
    assert _keys(out) == ["map", "heatmap", "overlay"]
    _assert_rgb(out)
    heat, overlay = np.asarray(out[1][2], float), np.asarray(out[2][2], float)
    assert np.abs(overlay - (0.25 * heat + 0.75 * np.asarray(IMAGE, float))).max() <= 1


def test_cam_map_is_min_max_grey() -> None:
    grey = np.asarray(pp.variants("cam", CAM, None)[0][2])
    assert grey[..., 0].min() == 0 and grey[..., 0].max() == 255
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_cam_without_image_has_no_overlay_and_wrong_size_is_an_error() -> None:
    assert _keys(pp.variants("cam", CAM, None)) == ["map", "heatmap"]
    with pytest.raises(ValueError, match="overlay"):
        pp.variants("cam", CAM, IMAGE.resize((W + 1, H)))


def test_signed_variants_centre_zero_on_the_middle_colour() -> None:
    raw = np.zeros((3, H, W))
    raw[0, :, :4] = -np.linspace(1, 2, H)[:, None]  # small negative
    raw[0, :, -4:] = np.linspace(1, 10, H)[:, None]  # large positive: min-max would shift 0
    for name in ("vik", "RdBu_r", "coolwarm"):
        out = pp.variants("signed", raw, IMAGE, diverging=name)
        assert _keys(out) == ["diverging", "saliency"]
        _assert_rgb(out)
        div = np.asarray(out[0][2], int)
        middle = np.rint(np.asarray(Colormap(pp._CMAP_IDS[name])(0.5))[:3] * 255)
        assert np.abs(div[:, 6:10] - middle).max() <= 1, name  # the zero columns
        assert not np.array_equal(div[0, 0], div[0, -1])  # negative and positive differ


def test_signed_limit_is_symmetric() -> None:
    raw = np.array([-1.0, 0.0, 1.0, 20.0]).reshape(1, 1, 4)
    div = np.asarray(pp.variants("signed", raw, None, diverging="gray")[0][2], int)[0, :, 0]
    assert div[1] == 128  # gray's middle entry
    assert div[0] + div[2] == pytest.approx(255, abs=1) and div[0] < 128 < div[2] < div[3]


def test_image_kind_shows_the_image() -> None:
    raw = np.stack([np.full((H, W), 0.0), np.full((H, W), 0.5), np.full((H, W), 2.0)])
    out = pp.variants("image", raw, None)
    assert _keys(out) == ["image"]
    assert out[0][2].getpixel((0, 0)) == (0, 128, 255)


@pytest.mark.parametrize("kind,shape", [("gradient", (3, H, W)), ("cam", (1, H, W)),
                                        ("signed", (3, H, W)), ("image", (3, H, W))])
@pytest.mark.parametrize("fill", [0.0, 3.5, np.nan, np.inf, -np.inf])
def test_degenerate_maps_do_not_crash(kind: str, shape: tuple[int, ...], fill: float) -> None:
    out = pp.variants(kind, np.full(shape, fill), IMAGE, guided=True)
    _assert_rgb(out)


def test_nan_counts_as_zero() -> None:
    g = GRAD.copy()
    g[:, 0, 0] = np.nan
    zero = GRAD.copy()
    zero[:, 0, 0] = 0.0
    for (_, _, a), (_, _, b) in zip(pp.variants("signed", g, None), pp.variants("signed", zero, None)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_inf_becomes_the_extreme_finite_value() -> None:
    cam = CAM.copy()
    cam[0, 0, 0] = np.inf
    grey = np.asarray(pp.variants("cam", cam, None)[0][2])[..., 0]
    assert grey[0, 0] == 255 and grey.max() == 255 and np.count_nonzero(grey == 255) >= 2


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"did you mean: cam\?"):
        pp.variants("cams", CAM, None)
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        pp.variants("cam", GRAD, None)
    with pytest.raises(ValueError, match="alpha"):
        pp.variants("cam", CAM, IMAGE, alpha=1.5)


# -- colormaps -----------------------------------------------------------------------------------
def test_every_offered_colormap_builds_a_256_entry_lut() -> None:
    assert set(pp.COLORMAPS) == set(pp._CMAP_IDS)
    assert pp.DEFAULT_COLORMAP in pp.COLORMAPS and pp.DEFAULT_DIVERGING in pp.COLORMAPS
    ramp = np.linspace(0, 1, 256)
    for name in pp.COLORMAPS:
        rgb = pp.apply_colormap(ramp, name)
        assert rgb.shape == (256, 3) and rgb.dtype == np.uint8


def test_apply_colormap_shape_ends_and_nan() -> None:
    x = np.array([[0.0, 1.0], [np.nan, 7.0]])
    rgb = pp.apply_colormap(x, "gray")
    assert rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[1, 0].tolist() == [0, 0, 0] and rgb[1, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("name", ["jet", "hsv"])
def test_seed_colormaps_are_selectable(name: str) -> None:
    heat = np.asarray(pp.variants("cam", CAM, None, colormap=name)[1][2])
    lut = pp.apply_colormap(np.linspace(0, 1, 256), name)
    assert {tuple(c) for c in heat.reshape(-1, 3)} <= {tuple(c) for c in lut}
    if name == "jet":  # matplotlib's jet: dark blue at 0, dark red at 1
        assert lut[0].tolist() == [0, 0, 128] and lut[-1].tolist() == [128, 0, 0]


def test_colormap_names_are_case_insensitive() -> None:
    assert np.array_equal(pp.apply_colormap(np.array([0.3]), "rdbu_r"),
                          pp.apply_colormap(np.array([0.3]), "RdBu_r"))


def test_unknown_colormap_suggests_close_names() -> None:
    with pytest.raises(ValueError, match=r"did you mean: viridis\b"):
        pp.apply_colormap(np.zeros((2, 2)), "viridiss")
    with pytest.raises(ValueError, match="unknown colormap"):
        pp.variants("gradient", GRAD, None, colormap="nope")


# -- output --------------------------------------------------------------------------------------
def test_thumbnail_fits_and_never_enlarges() -> None:
    big = IMAGE.resize((400, 200))
    assert pp.thumbnail(big).size == (160, 80)
    assert pp.thumbnail(IMAGE, size=100).size == IMAGE.size


def _chunk_types(png: bytes) -> list[bytes]:
    """Chunk types of a PNG file, in order, with consecutive IDATs merged."""
    types, i = [], 8
    while i < len(png):
        length = int.from_bytes(png[i : i + 4], "big")
        kind = png[i + 4 : i + 8]
        if not types or types[-1] != kind:
            types.append(kind)
        i += 12 + length
    return types


def test_save_png_bytes_are_deterministic_and_metadata_free(tmp_path: Path) -> None:
    img = pp.variants("cam", CAM, IMAGE)[2][2]
    tagged = img.copy()
    tagged.info.update(icc_profile=b"\0" * 64, dpi=(300, 300))
    a, b = tmp_path / "a.png", tmp_path / "sub" / "b.png"
    pp.save_png(img, a)
    pp.save_png(tagged, b)
    assert a.read_bytes() == b.read_bytes()
    assert _chunk_types(a.read_bytes()) == [b"IHDR", b"IDAT", b"IEND"]
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(img))


def test_save_png_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    pp.save_png(IMAGE, target)
    assert Image.open(target).size == (W, H)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_postprocess_does_not_import_torch() -> None:
    tree = ast.parse(Path(pp.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "torch" not in imported

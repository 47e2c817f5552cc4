"""Chunk sizes chosen for the model: measured, remembered, never changing a map."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import galleryvis
from galleryvis.engine.chunking import Chunking, fastest
from test_engine import CNN_TECHS, assert_unchanged, kwargs, snapshot


def _timer(per_image: dict[int, float]) -> tuple[list[int], object]:
    calls: list[int] = []

    def time_of(size: int) -> float:
        calls.append(size)
        return per_image[size]
    return calls, time_of


def test_the_fastest_size_is_kept_and_the_search_stops_once_sizes_get_slower() -> None:
    calls, time_of = _timer({2: 0.010, 4: 0.008, 8: 0.0081, 16: 0.0095, 32: 0.001})
    assert fastest(time_of, (2, 4, 8, 16, 32)) == 8  # as fast as 4 (within 5 %), in half the calls
    assert 32 not in calls  # 16 was more than 10 % slower than 4: no need to try 32
    # each size runs twice (the first call warms it), more up to 3 calls while they are short, and keeps its best
    assert calls.count(4) == 3


def test_the_search_stops_at_a_call_over_budget_and_at_out_of_memory() -> None:
    calls, time_of = _timer({2: 0.2, 4: 0.15, 8: 0.14, 16: 0.1})
    assert fastest(time_of, (2, 4, 8, 16)) == 8  # 8 x 0.14 s > CALL_BUDGET: 16 is not tried
    assert 16 not in calls and calls.count(8) == 1 and calls.count(2) == 2

    def oom_above_4(size: int) -> float:
        if size > 4:
            raise torch.OutOfMemoryError("simulated")
        return 1e-3 / size
    assert fastest(oom_above_4, (2, 4, 8, 16)) == 4


def test_an_int_batch_size_is_backward_chunks_and_four_times_as_many_forward_copies() -> None:
    assert Chunking.of(8) == Chunking(8, 32)
    assert Chunking(8, 32).halved() == Chunking(4, 16) and Chunking(1, 1).halved() == Chunking(1, 1)
    with pytest.raises(ValueError, match=">= 1"):
        Chunking(0, 4)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        galleryvis.attribute(nn.Linear(3, 2), torch.zeros(1, 3, 4, 4), "vanilla", 0, batch_size=0)


@pytest.mark.parametrize("name", CNN_TECHS)
def test_no_map_depends_on_the_chunking(tiny_seq: nn.Module, tiny_x: Tensor, name: str) -> None:
    kw = kwargs(name)
    small = galleryvis.attribute(tiny_seq, tiny_x, name, [0, 3, 5, 7], batch_size=Chunking(1, 3), **kw)
    large = galleryvis.attribute(tiny_seq, tiny_x, name, [0, 3, 5, 7], batch_size=Chunking(8, 64), **kw)
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-5 * float(large.abs().max()))


def test_measuring_a_model_gives_sizes_it_can_run_and_leaves_it_as_it_was(tiny_seq: nn.Module,
                                                                         tiny_x: Tensor) -> None:
    before = snapshot(tiny_seq)
    chunks = galleryvis.measure_chunking(tiny_seq, tiny_x[:1])
    assert 2 <= chunks.backward <= 32 and 2 <= chunks.forward <= 32
    assert_unchanged(tiny_seq, before)
    galleryvis.attribute(tiny_seq, tiny_x, "occlusion", 0, batch_size=chunks, window=16, stride=8)


GALLERY = """
[[images]]
path = "cat.png"

[[models]]
name = "resnet18"
weights = "none"
size = 32

[[techniques]]
name = "integrated_gradients"
params = { steps = 4 }
"""


def _write_gallery(folder: Path, extra: str = "") -> None:
    """:data:`GALLERY` (plus ``extra`` TOML) and its photo in ``folder``."""
    shutil.copy(Path(__file__).resolve().parent.parent / "input_images" / "cat.png", folder / "cat.png")
    (folder / "galleryvis.toml").write_text(GALLERY + extra)


@pytest.mark.slow
@pytest.mark.chunk_search
def test_a_gallery_measures_each_model_once_per_machine_and_an_explicit_batch_size_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from galleryvis.build import executor
    from galleryvis.config.manifest import load_manifest
    from galleryvis.build.pipeline import Options, build

    _write_gallery(tmp_path)
    measured, used = [], []
    real_measure, real_attribute = executor.measure_chunking, executor.attribute_calls

    def counting_measure(model: nn.Module, sample: Tensor) -> Chunking:
        measured.append((tuple(sample.shape), real_measure(model, sample)))
        return measured[-1][1]

    def recording(*args, batch_size, **kw):  # noqa: ANN002, ANN003
        used.append(batch_size)
        return real_attribute(*args, batch_size=batch_size, **kw)

    monkeypatch.setattr(executor, "measure_chunking", counting_measure)
    monkeypatch.setattr(executor, "attribute_calls", recording)  # what the compute stage calls
    manifest = load_manifest(tmp_path / "galleryvis.toml")
    build(manifest, Options(quiet=True))
    assert [shape for shape, _ in measured] == [(1, 3, 32, 32)] and used == [measured[0][1]]
    build(manifest, Options(quiet=True, force=True))  # the cache remembers this machine's sizes
    assert len(measured) == 1 and used[-1] == used[0]
    build(manifest, Options(quiet=True, force=True, batch_size=3))
    assert len(measured) == 1 and used[-1] == Chunking(3, 12)
    monkeypatch.setattr(executor, "machine", lambda device: "another machine")
    build(manifest, Options(quiet=True, force=True))
    assert len(measured) == 2  # measured again where it runs


@pytest.mark.slow
def test_scoring_runs_at_the_models_measured_chunks_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deletion / insertion gets the measured forward-only chunk and the sanity cascade the
    measured chunks; an explicit batch size wins there as well (forward-only passes 4x)."""
    from galleryvis.build import executor
    from galleryvis import metrics
    from galleryvis.config.manifest import load_manifest
    from galleryvis.build.pipeline import Options, build

    _write_gallery(tmp_path, "\n[metrics]\nenabled = true\nsanity_steps = 2\n")
    monkeypatch.setattr(executor, "measure_chunking", lambda model, sample: Chunking(5, 7))
    used: dict[str, list[object]] = {"deletion": [], "sanity": []}
    real_deletion, real_sanity = metrics.deletion_insertion, metrics.sanity_many

    def deletion(*args, batch_size, **kw):  # noqa: ANN002, ANN003
        used["deletion"].append(batch_size)
        return real_deletion(*args, batch_size=batch_size, **kw)

    def sanity(*args, batch_size, **kw):  # noqa: ANN002, ANN003
        used["sanity"].append(batch_size)
        return real_sanity(*args, batch_size=batch_size, **kw)

    monkeypatch.setattr(metrics, "deletion_insertion", deletion)
    monkeypatch.setattr(metrics, "sanity_many", sanity)
    manifest = load_manifest(tmp_path / "galleryvis.toml")
    build(manifest, Options(quiet=True))
    assert used == {"deletion": [7], "sanity": [Chunking(5, 7)]}
    build(manifest, Options(quiet=True, use_cache=False, batch_size=3))  # scores are cached by map, not chunk
    assert used == {"deletion": [7, 12], "sanity": [Chunking(5, 7), Chunking(3, 12)]}

"""The public API named in the issues is a contract: names and parameters stay as they are."""
from __future__ import annotations

import inspect

import galleryvis


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_attribute_signature():
    assert params(galleryvis.attribute)[:5] == ["model", "inputs", "technique", "target", "layer"]


def test_attribute_many_signature():
    assert params(galleryvis.attribute_many)[:6] == ["model", "inputs", "techniques", "target", "layer", "params"]


def test_synthesize_signature():
    sig = inspect.signature(galleryvis.synthesize)
    assert list(sig.parameters)[:2] == ["model", "technique"]
    for name in ("layer", "channel", "target", "image", "steps", "seed", "mean", "std"):
        assert sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert sig.parameters["seed"].default == 0 and sig.parameters["mean"].default == galleryvis.IMAGENET_MEAN


def test_metrics_signatures():
    assert params(galleryvis.metrics.deletion_insertion)[:6] == ["model", "inputs", "maps", "target", "steps", "substrate"]
    assert params(galleryvis.metrics.sanity)[:5] == ["model", "inputs", "technique", "target", "layer"]


def test_techniques_lists_every_registered_name():
    listed = [t["name"] for t in galleryvis.techniques()]
    assert {"vanilla", "gradcam", "scorecam", "lrp", "filter_visualization", "deep_dream"} <= set(listed)
    assert all({"params", "output", "paper"} <= set(t) for t in galleryvis.techniques())

"""Reference examples of concepts (galleryvis.attribution.references) against zennit-crp's
FeatureVisualization: relevance and activation maximization over a reference set, and the
receptive-field crop of a reference heatmap."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from test_concepts import engine_composite, in_range
from torch import Tensor, nn

from galleryvis.attribution.references import crop_box, reference_examples, reference_heatmaps

pytest.importorskip("zennit")
pytest.importorskip("crp")

LAYER = "3"  # the tiny net's second convolution, 16 channels on an 16 x 16 grid at 32 px
N = 12


@pytest.fixture(scope="module")
def reference_set() -> tuple[Tensor, list[int]]:
    g = torch.Generator().manual_seed(7)
    return in_range(torch.randn(N, 3, 32, 32, generator=g)), torch.randint(0, 10, (N,), generator=g).tolist()


def crp_rankings(model: nn.Module, x: Tensor, labels: list[int], folder: Path, max_target: str
                 ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """zennit-crp's FeatureVisualization over the set (each image's label its target), the
    composite as the engine's LRP: (samples, values, receptive-field neurons) per mode, each
    (SAMPLE_SIZE, C) best first."""
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.helper import load_maximization
    from crp.visualization import FeatureVisualization

    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    dataset = [(x[i], labels[i]) for i in range(len(x))]
    fv = FeatureVisualization(CondAttribution(model), dataset, {LAYER: ChannelConcept()}, max_target=max_target,
                              path=str(folder))
    fv.run(engine_composite(4, tuple(x.shape[-2:]), []), 0, len(x), batch_size=4)
    return {mode: tuple(np.asarray(a) for a in load_maximization(folder / f"{sub}_{max_target}_normed", LAYER))
            for mode, sub in (("relevance", "RelMax"), ("activation", "ActMax"))}


@pytest.mark.parametrize("max_target", ["sum", "max"])
def test_rankings_equal_zennit_crps_feature_visualization(tiny_seq: nn.Sequential, reference_set, tmp_path: Path,
                                                          max_target: str) -> None:
    x, labels = reference_set
    theirs = crp_rankings(tiny_seq, x, labels, tmp_path, max_target)
    for mode in ("relevance", "activation"):
        ours = reference_examples(tiny_seq, x, labels, LAYER, mode=mode, top=N, max_target=max_target, batch_size=5)
        samples, values, neurons = theirs[mode]
        assert ours.indices.shape == (16, N)
        np.testing.assert_allclose(ours.values.numpy(), values.T[:, :N], rtol=1e-4, atol=1e-6)
        # the order of images whose values tie (a channel dead on all of them) is either's own
        distinct = np.array([len(np.unique(v.round(6))) == N for v in ours.values.numpy()])
        assert distinct.sum() >= 12
        np.testing.assert_array_equal(ours.indices.numpy()[distinct], samples.T[distinct, :N])
        np.testing.assert_array_equal(ours.positions.numpy()[distinct], neurons.T[distinct, :N])


def test_a_ranking_never_depends_on_the_other_images(tiny_seq: nn.Sequential, reference_set) -> None:
    x, labels = reference_set
    whole = reference_examples(tiny_seq, x, labels, LAYER, top=N)
    half = reference_examples(tiny_seq, x[:6], labels[:6], LAYER, top=6, batch_size=1)
    kept = whole.indices < 6
    torch.testing.assert_close(whole.indices[kept].view(16, 6), half.indices)
    torch.testing.assert_close(whole.values[kept].view(16, 6), half.values)


def test_a_reference_heatmap_and_its_crop_are_zennit_crps(tiny_seq: nn.Sequential, reference_set) -> None:
    """The heatmap of a channel started from its activation at one neuron (zennit-crp's ``rf``),
    and the crop where it lies (its ``get_crop_range`` on the blurred, max-normed heatmap)."""
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.helper import max_norm
    from crp.image import get_crop_range
    from torchvision.transforms.functional import gaussian_blur

    x, _ = reference_set
    refs = reference_examples(tiny_seq, x, None, LAYER, mode="activation", top=3)
    channel = 5
    images, neurons = refs.indices[channel], refs.positions[channel]
    ours = reference_heatmaps(tiny_seq, x[images], channel, LAYER, neurons)
    model = copy.deepcopy(tiny_seq)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    attribution = CondAttribution(model)
    conditions = [{LAYER: {channel: [int(n)]}} for n in neurons]
    theirs = attribution(x[images].clone().requires_grad_(True), conditions, engine_composite(3, (32, 32), []),
                         mask_map=ChannelConcept.mask_rf, start_layer=LAYER, exclude_parallel=False).heatmap
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-4, atol=1e-6 * float(theirs.abs().max()))
    for i in range(3):
        blurred = max_norm(gaussian_blur(theirs[i:i + 1].detach(), kernel_size=19)[0])
        r0, r1, c0, c1 = (int(v) for v in get_crop_range(blurred, 0.1))
        assert crop_box(ours[i]) == (r0, r1, c0, c1)

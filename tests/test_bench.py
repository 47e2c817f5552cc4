"""The bench's own pieces that decide what is compared (bench/): the segmentation section's
objective and regions are galleryvis's, and its agreement check reads Pearson r per image."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from galleryvis import targets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ lives beside the package

from bench import peers  # noqa: E402
from bench.common import segment_targets  # noqa: E402
from bench.worker import _lowest_r  # noqa: E402


class Scores(nn.Module):
    """A 'segmentation model' that returns fixed scores as torchvision's do, ``{"out": ...}``."""

    def __init__(self, scores: Tensor) -> None:
        super().__init__()
        self.scores = scores

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.scores[: x.shape[0]]}


def test_segment_targets_and_scores_are_galleryvis_segment() -> None:
    torch.manual_seed(0)
    scores = torch.randn(3, 5, 6, 7)
    scores[2, 0] += 10  # image 2: background everywhere, which is then its top-1
    classes, masks = segment_targets(Scores(scores), torch.zeros(3, 3, 6, 7))
    ours = targets.Segment().bind(3).resolve(scores)
    assert classes == list(ours.cls) and classes[2] == 0 and classes[0] != 0
    assert torch.equal(masks, ours.mask)
    torch.testing.assert_close(peers.segment_scores(scores, torch.tensor(classes), masks.float()),
                               ours.score(scores))


def test_lowest_r_per_image() -> None:
    torch.manual_seed(1)
    a = torch.rand(2, 1, 4, 4)
    b = 3 * a + 1
    b[1] = torch.rand(1, 4, 4)
    r = _lowest_r(a, b[:, 0].numpy())  # grad-cam's (N, H, W) numpy maps against (N, 1, H, W)
    assert r < 0.99 and math.isclose(_lowest_r(a, 3 * a + 1), 1.0, abs_tol=1e-9)
    assert math.isnan(_lowest_r(a, torch.rand(2, 3, 4, 4)))
    assert math.isnan(_lowest_r(a, torch.ones(2, 1, 4, 4)))  # a constant map

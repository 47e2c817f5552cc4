"""The bench's own pieces that decide what is compared (bench/): the segmentation section's
objective and regions are galleryvis's, the detection section's box score and D-RISE formula
are galleryvis's, and the agreement check reads Pearson r per image."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

import galleryvis
from galleryvis import targets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ lives beside the package

from bench import peers  # noqa: E402
from bench.common import RAW, detection_targets, segment_targets  # noqa: E402
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


class Boxes(nn.Module):
    """A 'detector' that returns torchvision's dicts: three fixed boxes whose scores are the mean
    pixel of each box's region, so masks change them."""

    task = "detection"
    boxes = torch.tensor([[0.0, 0, 8, 8], [8.0, 0, 16, 8], [1.0, 1, 9, 9]])

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        regions = [x[:, :, 0:8, 0:8], x[:, :, 0:8, 8:16], x[:, :, 1:9, 1:9]]
        scores = torch.stack([r.mean((1, 2, 3)) for r in regions], 1)
        return [{"boxes": self.boxes, "labels": torch.tensor([1, 2, 1]), "scores": s} for s in scores]


def test_detection_targets_box_scores_and_drise_formula_are_galleryvis() -> None:
    torch.manual_seed(2)
    x, model = torch.rand(2, 3, 16, 16), Boxes()
    labels, boxes = detection_targets(model, x)
    out = model(x)
    ref = targets.Detection().resolve(out)
    assert labels == [r.label for r in ref.reference()] and torch.equal(boxes, torch.stack([r.box for r in ref.reference()]))
    torch.testing.assert_close(peers.box_scores(out, torch.tensor(labels), boxes), ref.score(out))
    masks = (torch.rand(12, 1, 16, 16) < 0.5).float()
    ours = galleryvis.attribute(model, x, "drise", targets.Detection(), masks=masks, **RAW)
    for batch in (1, 5):
        torch.testing.assert_close(peers.torch_drise(model, x, [0, 0], masks, batch), ours[:, 0])

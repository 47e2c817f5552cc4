"""Does a synthesized class image transfer? How a model, possibly not the one it was made with,
ranks the target class for it (the gallery shows it; ``bench/transfer.py`` runs it at scale)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galleryvis.engine import IMAGENET_MEAN, IMAGENET_STD, model_device
from galleryvis.hooks import prepared
from galleryvis.targets import Class


def class_rank(model: nn.Module, image01: Tensor, target: int, *, size: int,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> tuple[int, float]:
    """(rank of ``target`` among ``model``'s logits, 1 = top; its softmax probability) for one
    image (1,3,H,W) in [0, 1], resized to ``size`` x ``size`` (bilinear, antialiased) and
    normalized with ``mean`` / ``std``. Ties count in the image's favour."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    x = F.interpolate(image01.float().cpu(), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
    with prepared(model), torch.no_grad():
        logits = model(((x - m) / s).to(model_device(model))).float().cpu()
    objective = Class(target)
    return int((logits > objective.score(logits)[:, None]).sum()) + 1, float(objective.confidence(logits)[0])

"""The sanity check's randomization: a module's parameters re-initialized in place, deterministically.
:func:`galleryvis.metrics.sanity_many` applies it to a deep copy of the model only, step by step
from the logits towards the input; the caller's model is never randomized."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@torch.no_grad()
def reinitialize(module: nn.Module, seed: int, index: int) -> None:
    """Re-initialize ``module``'s own parameters (PyTorch's defaults), drawn on the CPU from a
    ``torch.Generator`` seeded by ``seed`` and the module's position ``index``: convolution /
    linear weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); normalization layers weight 1,
    bias 0 and fresh running statistics; any other module Gaussian noise with its parameters'
    mean and std. The tensors are written in place (the same tensors, new values)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + index)
    if isinstance(module, _NORMS):
        module.reset_parameters()
        return
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() >= 2:
        fan_in = weight[0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
        for p in module.parameters(recurse=False):
            p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound))
        return
    for p in module.parameters(recurse=False):
        mu, sd = float(p.double().mean()), float(p.double().std()) if p.numel() > 1 else 1.0
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).mul_(sd).add_(mu))

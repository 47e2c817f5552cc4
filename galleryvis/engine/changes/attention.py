"""Attention probabilities of a vision transformer, captured in a context manager that leaves the
model as it was: torchvision's ``nn.MultiheadAttention``, timm's ``Attention`` (fused or not)
and Hugging Face ViT, CLIP and SigLIP attention (``q_proj``/``k_proj``/``v_proj`` and
``o_proj`` or ``out_proj``, any implementation).

Each captured tensor (N, heads, T, T) is the one the attention multiplies the values with, so the
gradient of a score with respect to it is that of the attention (Chefer et al.).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch.nn.functional as F
from torch import Tensor, nn

from galleryvis.engine.changes import attributes_set, forward_hooks
from galleryvis.errors import LayerError


def _is_timm(m: nn.Module) -> bool:
    return hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module) \
        and hasattr(m, "qkv")


#: How Hugging Face attention modules name their output projection, scaling and head count:
#: ViT's, and CLIP's / SigLIP's.
_HF_NAMES = (("o_proj", "scaling", "num_attention_heads"), ("out_proj", "scale", "num_heads"))


def _hf_names(m: nn.Module) -> tuple[str, str, str] | None:
    """The :data:`_HF_NAMES` entry ``m`` follows, None when it is no Hugging Face attention."""
    if not all(isinstance(getattr(m, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")):
        return None
    return next((names for names in _HF_NAMES if isinstance(getattr(m, names[0], None), nn.Linear)
                 and all(hasattr(m, n) for n in names[1:])), None)


def _is_hf(m: nn.Module) -> bool:
    return _hf_names(m) is not None


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The self-attention modules galleryvis can read, by name, in ``named_modules`` order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention) or _is_timm(m) or _is_hf(m)]


def self_attention(x: Tensor, heads: int, in_weight: Tensor, in_bias: Tensor | None, out_weight: Tensor,
                   out_bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """Batch-first multi-head self-attention of ``x`` (N, T, D) with packed q, k, v projections,
    computed op by op: (output, attention (N, heads, T, T))."""
    n, t, d = x.shape
    q, k, v = F.linear(x, in_weight, in_bias).view(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
    attn = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(n, t, d)
    return F.linear(out, out_weight, out_bias), attn


def _mha(m: nn.MultiheadAttention, x: Tensor) -> tuple[Tensor, Tensor]:
    """Batch-first self-attention of ``x`` (N, T, D) with ``m``'s weights: (output, attention)."""
    return self_attention(x, m.num_heads, m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias)


def _hf(m: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Hugging Face ViT attention of ``x`` (N, T, D) recomputed eagerly: (output, attention)."""
    n, t, _ = x.shape
    out, scaling, heads = _hf_names(m)  # type: ignore[misc]
    q, k, v = (getattr(m, p)(x).view(n, t, getattr(m, heads), -1).transpose(1, 2)
               for p in ("q_proj", "k_proj", "v_proj"))
    attn = (q @ k.transpose(-2, -1) * getattr(m, scaling)).softmax(-1)
    return getattr(m, out)((attn @ v).transpose(1, 2).reshape(n, t, -1)), attn


@contextmanager
def attentions(model: nn.Module) -> Iterator[list[Tensor]]:
    """While inside, every forward appends each attention module's probabilities (N, heads, T, T)
    to the yielded list, in call order. timm's fused attention is switched to its explicit path;
    torchvision's and Hugging Face's attention outputs are recomputed from the module's weights
    and replace its own (the same values, with the probabilities in the graph). Masks are
    refused. Everything is restored on exit, also after an exception."""
    found = attention_modules(model)
    if not found:
        raise LayerError("the model has no self-attention galleryvis can read (torchvision nn.MultiheadAttention, "
                         "timm Attention, Hugging Face ViT, CLIP and SigLIP attention)")
    store: list[Tensor] = []

    def mha_hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")][len(args):])[:3]
        if not (q is k is v) or kwargs.get("attn_mask") is not None or kwargs.get("key_padding_mask") is not None \
                or not m.batch_first:
            raise LayerError("attention: only unmasked, batch-first self-attention (torchvision ViT) is read")
        y, attn = _mha(m, q)
        store.append(attn)
        return y, (attn if kwargs.get("need_weights", True) else None)

    def hf_hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        if kwargs.get("attention_mask") is not None or len(args) > 1 and args[1] is not None:
            raise LayerError("attention: masked Hugging Face attention is not read")
        y, attn = _hf(m, args[0] if args else kwargs["hidden_states"])
        store.append(attn)
        return (y, attn) + tuple(out[2:]) if isinstance(out, tuple) else y

    def drop_hook(_m: nn.Module, _i: Any, out: Tensor) -> Tensor:
        store.append(out)
        return out

    mha = [(m, mha_hook) for _, m in found if isinstance(m, nn.MultiheadAttention)]
    hf = [(m, hf_hook) for _, m in found if not isinstance(m, nn.MultiheadAttention) and _is_hf(m)]
    timm = [m for _, m in found if not isinstance(m, nn.MultiheadAttention) and not _is_hf(m)]
    with forward_hooks(mha + hf, with_kwargs=True), attributes_set(timm, "fused_attn", False), \
            forward_hooks([(m.attn_drop, drop_hook) for m in timm]):
        yield store

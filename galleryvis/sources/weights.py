"""Weights files shared by the sources: plain state dicts only, never pickled code."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from galleryvis.sources import ModelError


def load_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """A state dict from a local file: ``.safetensors`` (tensors only by design), anything
    else with ``torch.load(weights_only=True)``, which refuses pickled code."""
    if not path.is_file():
        raise ModelError(f"{what}: weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ModelError(f"{what}: {str(path)!r} is a .safetensors file: pip install safetensors") from None
        try:
            return load_file(path)
        except Exception as exc:  # noqa: BLE001  (safetensors raises its own SafetensorError)
            raise ModelError(f"{what}: cannot read {str(path)!r} as safetensors: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{what}: refusing to load {str(path)!r}: not a plain tensor state dict "
                         f"(torch.load weights_only=True said: {first})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{what}: {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def load_into(model: nn.Module, path: Path, what: str) -> None:
    """Load the weights file at ``path`` into ``model``; a mismatch is a one-line ModelError."""
    try:
        model.load_state_dict(load_state_dict(path, what))
    except RuntimeError as exc:
        raise ModelError(f"{what}: {str(path)!r} does not fit the architecture: "
                         f"{str(exc).strip().splitlines()[0]}") from None


def state_sha256(model: nn.Module) -> str:
    """Hex SHA-256 of every parameter and buffer (name, dtype, shape and bytes, in module order):
    what identifies weights that no file or name pins. VGG16 (528 MiB) takes 0.4 to 0.7 s."""
    digest = hashlib.sha256()
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def random_init(model: nn.Module, seed: int) -> str:
    """The fingerprint of a randomly initialized ``model`` built under ``seed``: the seed, and
    the state's hash (an initialization that changes with torch's version changes the key)."""
    return f"random-init:seed={seed}:state={state_sha256(model)}"


def is_path(weights: str) -> bool:
    """Whether a weights spec names a file rather than a registry entry."""
    return weights.endswith((".pth", ".pt", ".bin", ".safetensors")) or "/" in weights or "\\" in weights


def no_named_weights(what: str, weights: str) -> str:
    """The check of a source that has no named weights: always a ModelError."""
    raise ModelError(f'{what} takes "DEFAULT", "none" or a weights file path (.pth, .pt, .safetensors), '
                     f"got {weights!r}")


def folder_weights(folder: Path, what: str) -> Path:
    """The weights file of a model folder (a hub snapshot, ``save_pretrained``, timm's
    ``save_for_hf``): ``model.safetensors`` preferred, else the one ``.safetensors`` file, else
    ``pytorch_model.bin`` (loaded with ``weights_only``)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pth"))
    if len(found) != 1:
        raise ModelError(f"{what}: {str(folder)!r} holds {len(found) or 'no'} weights files; expected one "
                         f"(model.safetensors preferred)")
    return found[0]

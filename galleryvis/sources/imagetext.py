"""Image–text models (CLIP, SigLIP) as classifiers over text prompts.

:class:`ImageText` wraps a CLIP-like model (open_clip's ``CLIP`` / ``CustomTextCLIP``, Hugging
Face ``CLIPModel`` or ``SiglipModel``) so that it is called on images alone and returns logits
over a fixed list of prompts: the model's own scaled similarities ``logit_scale * cos(image,
text)`` (plus ``logit_bias`` for SigLIP), exactly its ``logits_per_image``. The prompts' text
embeddings are computed once, without gradients, and kept (one per text, shared by every view
:meth:`ImageText.with_prompts` makes), so every technique runs on the vision tower with the
text side fixed. Layer names are the whole model's (``visual.transformer.resblocks.11.ln_1``
for open_clip, ``vision_model.encoder.layers.11.layer_norm1`` for Hugging Face): the wrapper
holds the vision modules under their own names and nothing of the text tower.

As a zero-shot classifier, a prompt is a class: ``target=i`` (``targets.Class(i)``) explains
prompt ``i``'s logit, its confidence is the softmax over the prompts, ``None`` the best prompt.
A prompt may be a group of texts (templates of one class), whose normalized embeddings are
averaged and normalized again, as CLIP's zero-shot classifier does (:func:`imagenet_prompts`).
:meth:`ImageText.text` is the objective of one prompt as a free text: the same score, and a
confidence of that pair alone (:class:`galleryvis.targets.Text`).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galleryvis.engine.changes import prepared
from galleryvis.targets import Text

#: One prompt: a text, or a group of texts (the templates of one class) averaged into one.
Prompt = Union[str, Sequence[str]]

#: The seven prompt templates CLIP's authors chose for ImageNet from their 80 by a sequential
#: search on the validation set (OpenAI CLIP, ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``,
#: 2021: "a subset of 7 templates ... get[s] the best score"); open_clip ships the same list
#: (``zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES``).
IMAGENET_TEMPLATES = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                      "a {} in a video game.", "art of the {}.", "a photo of the small {}.")

#: The one template CLIP's paper uses by default (Radford et al. 2021, section 3.1.4: "A photo
#: of a {label}." improves ImageNet accuracy by 1.3 % over the bare class name).
DEFAULT_TEMPLATE = "a photo of a {}."

#: The model kinds :class:`ImageText` reads, and the vision modules it holds of each.
_VISION = {"open_clip": ("visual",), "clip": ("vision_model", "visual_projection"), "siglip": ("vision_model",)}

#: Texts per forward of the text tower while prompts are encoded.
_TEXT_BATCH = 256


def imagenet_prompts(classes: Sequence[str]) -> list[tuple[str, ...]]:
    """One prompt group per class name: every :data:`IMAGENET_TEMPLATES` filled with it."""
    return [tuple(t.format(c) for t in IMAGENET_TEMPLATES) for c in classes]


def zero_shot(model: nn.Module, prompts: str | Sequence[str] | None, tokenizer: Callable[..., Any] | None = None
              ) -> ImageText:
    """``model`` as a zero-shot classifier over a manifest's ``prompts``: a list of texts (each a
    class, labelled by its text), or ImageNet's 1000 classes (galleryvis's class names): with
    ``"imagenet"`` each the group of :data:`IMAGENET_TEMPLATES` filled with it, with None (not
    given) :data:`DEFAULT_TEMPLATE` alone, seven times fewer texts through the text tower."""
    if prompts is None or prompts == "imagenet":
        from galleryvis.sources.labels import imagenet_labels

        classes = imagenet_labels()
        groups = imagenet_prompts(classes) if prompts else [DEFAULT_TEMPLATE.format(c) for c in classes]
        return ImageText(model, groups, tokenizer, classes)
    if isinstance(prompts, str):
        raise ValueError(f'prompts must be a list of texts or "imagenet", not {prompts!r}')
    return ImageText(model, list(prompts), tokenizer)


def kind_of(model: nn.Module) -> str | None:
    """``"open_clip"``, ``"clip"`` (Hugging Face ``CLIPModel``), ``"siglip"`` (``SiglipModel``)
    or None when ``model`` is not an image-text model :class:`ImageText` reads (``Siglip2Model``
    takes patches with masks and shapes, not images)."""
    if type(model).__name__.startswith("Siglip2"):
        return None
    if isinstance(getattr(model, "visual", None), nn.Module) and callable(getattr(model, "encode_text", None)) \
            and hasattr(model, "logit_scale"):
        return "open_clip"
    if isinstance(getattr(model, "vision_model", None), nn.Module) and hasattr(model, "logit_scale") \
            and callable(getattr(model, "get_text_features", None)):
        return "clip" if isinstance(getattr(model, "visual_projection", None), nn.Module) else "siglip"
    return None


class ImageText(nn.Module):
    """``model`` as a classifier over ``prompts``: ``forward(x)`` gives (N, len(prompts)) logits.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP``, a Hugging Face ``CLIPModel`` or
            ``SiglipModel``; its vision modules become this module's (same names, same
            tensors), its text tower is used only to encode prompts.
        prompts: the texts to score, each a string or a group of strings averaged into one.
        tokenizer: open_clip: a callable ``texts -> LongTensor`` (default: open_clip's
            ``SimpleTokenizer`` at the model's context length); Hugging Face: the model's
            tokenizer (``AutoTokenizer.from_pretrained(folder)``), called with padding to the
            text model's maximum length, as SigLIP was trained.
        labels: one name per prompt for pages and messages (default: the prompt, or the first
            text of a group).
        texts: free texts scored after the prompts (columns ``len(prompts)`` on), which are no
            classes: :attr:`classes` counts the prompts alone, and a class objective made with
            ``classes=model.classes`` reads its softmax over them (:meth:`text` makes a text's
            objective).
    """

    #: Its task (:func:`galleryvis.tasks.of_model`): its logits are over prompts, its targets prompts or texts.
    task = "image-text"

    def __init__(self, model: nn.Module, prompts: Sequence[Prompt], tokenizer: Callable[..., Any] | None = None,
                 labels: Sequence[str] | None = None, *, texts: Sequence[str] = (),
                 _cache: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        kind = kind_of(model)
        if kind is None:
            raise TypeError(f"ImageText reads open_clip CLIP models and Hugging Face CLIPModel / SiglipModel, "
                            f"not {type(model).__name__}")
        if kind == "open_clip" and tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            tokenizer = SimpleTokenizer(context_length=int(getattr(model, "context_length", 77)))
        if tokenizer is None:
            raise TypeError("ImageText of a Hugging Face model needs its tokenizer (AutoTokenizer.from_pretrained)")
        self.kind, self.tokenizer = kind, tokenizer
        self.__dict__["source"] = model  # the whole model, not a submodule: its text tower stays out
        for name in _VISION[kind]:
            self.add_module(name, getattr(model, name))
        self.prompts: tuple[str | tuple[str, ...], ...] = tuple(p if isinstance(p, str) else tuple(p) for p in prompts)
        if not self.prompts or any(not p for p in self.prompts):
            raise ValueError("ImageText needs at least one prompt, and every prompt group at least one text")
        self.labels = [str(v) for v in labels] if labels is not None else \
            [p if isinstance(p, str) else p[0] for p in self.prompts]
        if len(self.labels) != len(self.prompts):
            raise ValueError(f"ImageText: {len(self.labels)} labels for {len(self.prompts)} prompts")
        self.texts: tuple[str, ...] = tuple(t for t in dict.fromkeys(texts) if t not in self.prompts)
        if any(not isinstance(t, str) or not t.strip() for t in self.texts):
            raise ValueError("ImageText: every free text must be a non-empty string")
        bias = getattr(model, "logit_bias", None)
        self._cache = {} if _cache is None else _cache
        device = next(self.parameters()).device
        self.register_buffer("scale", model.logit_scale.detach().exp().float().reshape(()).to(device), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().float().reshape(()).to(device),
                             persistent=False)
        self.register_buffer("text_features", self._prompt_features().to(device), persistent=False)

    @property
    def classes(self) -> int:
        """How many leading logit columns are classes: the prompts (free texts follow them)."""
        return len(self.prompts)

    @property
    def sigmoid(self) -> bool:
        """Whether the model was trained with a sigmoid loss (it has a ``logit_bias``, as SigLIP):
        each image-text logit is then a probability's log-odds on its own."""
        return self.bias is not None

    def prompts_sha256(self) -> str:
        """Hex SHA-256 of the prompts: what the logits mean, part of a loaded model's fingerprint."""
        return hashlib.sha256(json.dumps(self.prompts, ensure_ascii=False).encode()).hexdigest()

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, prompts={len(self.prompts)}" + (f", texts={len(self.texts)}" if self.texts else "")

    # -- text side ------------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> None:
        """Encode the ``texts`` not yet cached (normalized float32 rows, on the CPU)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if not todo:
            return
        model = self.source
        vision = tuple(f"{name}." for name in _VISION[self.kind])  # moved with this module, maybe elsewhere
        device = next(p.device for n, p in model.named_parameters() if not n.startswith(vision))
        with torch.no_grad(), prepared(model):
            for i in range(0, len(todo), _TEXT_BATCH):
                chunk = todo[i:i + _TEXT_BATCH]
                if self.kind == "open_clip":
                    features = model.encode_text(self.tokenizer(chunk).to(device))
                else:
                    length = int(model.config.text_config.max_position_embeddings)
                    enc = self.tokenizer(chunk, padding="max_length", truncation=True, max_length=length,
                                         return_tensors="pt")
                    out = model.get_text_features(**{k: v.to(device) for k, v in enc.items()
                                                     if k in ("input_ids", "attention_mask")})
                    features = getattr(out, "pooler_output", out)
                for text, row in zip(chunk, F.normalize(features.float(), dim=-1).cpu()):
                    self._cache[text] = row

    def _prompt_features(self) -> Tensor:
        """(prompts + texts, D): each prompt's normalized embedding (a group's: the normalized
        mean), then each free text's."""
        groups = [(p,) if isinstance(p, str) else p for p in self.prompts] + [(t,) for t in self.texts]
        self._encode([t for g in groups for t in g])
        return torch.stack([F.normalize(torch.stack([self._cache[t] for t in g]).mean(0), dim=-1) for g in groups])

    def with_prompts(self, prompts: Sequence[Prompt], labels: Sequence[str] | None = None,
                     texts: Sequence[str] = ()) -> ImageText:
        """The same model (the very modules) over other prompts (and free ``texts``); texts
        encoded before are reused."""
        view = ImageText(self.source, prompts, self.tokenizer, labels, texts=texts, _cache=self._cache)
        return view.to(self.text_features.device)

    def with_texts(self, texts: Sequence[str]) -> ImageText:
        """The same model over the same prompts, with the free ``texts`` scored after them: the
        prompts' logits, and so their softmax, stay as they are."""
        return self.with_prompts(self.prompts, self.labels, texts)

    def text(self, text: str) -> Text:
        """The objective of ``text``, a prompt or a free text of this model, as a free text
        (:class:`galleryvis.targets.Text`): its scaled similarity, and the pair's own confidence
        (not the softmax over the prompts)."""
        columns = [*self.prompts, *self.texts]
        if text not in columns:
            raise ValueError(f"{text!r} is neither a prompt nor a free text of this model; make a model that "
                             f"scores it with .with_texts([{text!r}])")
        return Text(text, columns.index(text), float(self.scale), None if self.bias is None else float(self.bias))

    # -- image side -----------------------------------------------------------------------------
    def image_features(self, x: Tensor) -> Tensor:
        """The vision tower's embedding of images ``x`` (N, D), not normalized."""
        if self.kind == "open_clip":
            out = self.visual(x)
            return out[0] if isinstance(out, tuple) else out
        pooled = self.vision_model(pixel_values=x).pooler_output
        return self.visual_projection(pooled) if self.kind == "clip" else pooled

    def forward(self, x: Tensor) -> Tensor:
        """(N, prompts + texts): ``scale * cos(image, prompt)`` (``+ bias`` for SigLIP), the model's logits."""
        image = F.normalize(self.image_features(x), dim=-1)
        logits = self.scale.to(image.dtype) * image @ self.text_features.to(image.dtype).T
        return logits if self.bias is None else logits + self.bias.to(image.dtype)

"""Image-text models (galleryvis.sources.imagetext): the wrapper's logits are the model's own, and maps on
its vision tower agree with the references, per-image Pearson r >= 0.99.

Models: seeded random tiny open_clip CLIP, Hugging Face CLIPModel and SiglipModel (64 px, patch 8,
two layers), on two photos. Grad-CAM against pytorch-grad-cam with its ViT reshape transform and a
similarity target (the cosine of the image embedding with a text's, as its CLIP tutorial does);
attention rollout and attention x gradient against the references of test_agreement; LRP (AttnLRP,
CP-LRP) against lxt's patches on open_clip and Hugging Face CLIP.
Run with ``-s`` to see every r.
"""
from __future__ import annotations

import copy
import html
import json
import re
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import gradient_times_input, trained_like
from test_agreement import (ExplicitAttention, check, frozen, gradient_reference, pearson, reshape_transform,
                            rollout_reference, up)
from torch import Tensor, nn

import galleryvis
from galleryvis import targets, tasks
from galleryvis.sources.imagetext import IMAGENET_TEMPLATES, ImageText, imagenet_prompts
from galleryvis.config.manifest import ModelSpec, load_manifest
from galleryvis.sources.loading import ModelError, load_model
from galleryvis.storage.images import load_image

open_clip = pytest.importorskip("open_clip")
pgc = pytest.importorskip("pytorch_grad_cam")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PROMPTS = ["a photo of a cat", "a photo of a rocket", "a red car"]
CONTEXT = 16
#: kind -> (the last block's first LayerNorm, prefix tokens)
LAYERS = {"open_clip": ("visual.transformer.resblocks.1.ln_1", 1),
          "clip": ("vision_model.encoder.layers.1.layer_norm1", 1),
          "siglip": ("vision_model.encoder.layers.1.layer_norm1", 0)}


class Tokenizer:
    """open_clip's tokenizer (CLIP's vocabulary, shipped in its wheel) with a Hugging Face
    tokenizer's call: ``input_ids`` and ``attention_mask``, padded to ``max_length``."""

    def __init__(self) -> None:
        self.inner = open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT)

    def __call__(self, texts: list[str], max_length: int = CONTEXT, **_: object) -> dict[str, Tensor]:
        ids = self.inner(texts)[:, :max_length]
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def tiny_open_clip(seed: int = 0) -> nn.Module:
    """A seeded tiny open_clip CLIP: ViT 64 px, patch 8, width 32, two layers; CLIP's vocabulary."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    return CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, image_size=64, patch_size=8),
                text_cfg=CLIPTextCfg(context_length=CONTEXT, vocab_size=49408, width=32, heads=2, layers=2)).eval()


def tiny_hf(kind: str) -> nn.Module:
    """A seeded tiny Hugging Face CLIPModel or SiglipModel (eager attention), 64 px, patch 8."""
    transformers = pytest.importorskip("transformers")
    vision = dict(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64)
    text = dict(vocab_size=49408, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=CONTEXT)
    torch.manual_seed(0)
    if kind == "clip":
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        return transformers.CLIPModel._from_config(config, attn_implementation="eager").eval()
    config = transformers.SiglipConfig(text_config=text, vision_config=vision)
    model = transformers.SiglipModel._from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # a trained SigLIP's scale and bias (its init makes every pair's sigmoid ~0)
        model.logit_scale.fill_(torch.tensor(10.0).log())
        model.logit_bias.fill_(-1.0)
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {"open_clip": tiny_open_clip(), "clip": tiny_hf("clip"), "siglip": tiny_hf("siglip")}


def wrap(models: dict[str, nn.Module], kind: str, prompts: list = PROMPTS) -> ImageText:
    return ImageText(models[kind], prompts, None if kind == "open_clip" else Tokenizer())


def own_logits(model: nn.Module, kind: str, x: Tensor, texts: list[str], tokenizer: object = None) -> Tensor:
    """The model's own ``logits_per_image`` for images ``x`` and ``texts`` (Hugging Face:
    tokenized by ``tokenizer``, padded to the context length; default :class:`Tokenizer`)."""
    with torch.no_grad():
        if kind == "open_clip":
            image, text, scale = model(x, open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT)(texts))
            return scale * image @ text.T
        enc = (tokenizer or Tokenizer())(texts, padding="max_length", max_length=CONTEXT, return_tensors="pt")
        return model(pixel_values=x, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits_per_image


@pytest.mark.parametrize("kind", list(LAYERS))
def test_logits_are_the_models_own(models: dict, photos64: Tensor, kind: str) -> None:
    clip = wrap(models, kind)
    with torch.no_grad():
        ours = clip(photos64)
    torch.testing.assert_close(ours, own_logits(models[kind], kind, photos64, PROMPTS), rtol=1e-4, atol=1e-5)
    assert clip.sigmoid == (kind == "siglip") and tasks.of_model(clip) == "image-text"
    names = dict(models[kind].named_modules())
    assert all(names[n] is m for n, m in clip.named_modules() if n), "layer names are the whole model's"
    assert not any("text" in n for n, _ in clip.named_modules()), "the text tower is not part of the wrapper"


def test_prompt_groups_average_their_texts(models: dict, photos64: Tensor) -> None:
    """A group of texts is one prompt: its normalized embeddings' mean, normalized (CLIP's
    zero-shot classifier); the ImageNet prompts are every template per class."""
    clip = wrap(models, "open_clip", [("a photo of a cat", "a red car"), "a photo of a rocket"])
    single = clip.with_prompts(["a photo of a cat", "a red car"])
    mean = F.normalize(single.text_features.mean(0), dim=0)
    torch.testing.assert_close(clip.text_features[0], mean)
    assert clip.labels == ["a photo of a cat", "a photo of a rocket"]
    prompts = imagenet_prompts(["tabby", "goldfish"])
    assert len(prompts) == 2 and prompts[1] == tuple(t.format("goldfish") for t in IMAGENET_TEMPLATES)


def test_texts_are_encoded_once(models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_open_clip(1)
    calls: list[int] = []
    encode = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda tokens: calls.append(len(tokens)) or encode(tokens))
    clip = ImageText(model, PROMPTS)
    other = clip.with_prompts([PROMPTS[2], "a dog", PROMPTS[0]])
    assert calls == [3, 1], "only the new text is encoded"
    torch.testing.assert_close(other.text_features[0], clip.text_features[2])
    assert other.visual is clip.visual


@pytest.mark.parametrize("kind", list(LAYERS))
def test_text_confidence(models: dict, photos64: Tensor, kind: str) -> None:
    """A free text's confidence is the pair's own: SigLIP's sigmoid of the logit, CLIP's
    (1 + cos) / 2; a prompt's (targets.Class) is the softmax over the prompts."""
    clip = wrap(models, kind)
    with torch.no_grad():
        logits = clip(photos64)
    objective = clip.text("a red car").bind(2)
    logit = own_logits(models[kind], kind, photos64, PROMPTS)[:, 2]
    torch.testing.assert_close(objective.score(logits), logit, rtol=1e-4, atol=1e-5)
    expected = logit.sigmoid() if kind == "siglip" else (1 + logit / clip.scale) / 2
    torch.testing.assert_close(objective.confidence(logits), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(targets.Class(2).bind(2).confidence(logits), logits.softmax(1)[:, 2])
    with pytest.raises(ValueError, match="neither a prompt nor a free text of this model; make a model that scores"):
        clip.text("a blue car")


@pytest.mark.parametrize("kind", list(LAYERS))
def test_free_texts_leave_the_prompts_as_they_were(models: dict, photos64: Tensor, kind: str) -> None:
    """Free texts are scored after the prompts: the prompts' logits, their softmax (a class
    objective with ``classes``) and top-1 are unchanged; a text's score is its similarity logit."""
    clip = wrap(models, kind)
    wide = clip.with_texts(["a blue car", PROMPTS[1]])  # a prompt is not repeated as a text
    assert wide.texts == ("a blue car",) and wide.classes == len(PROMPTS)
    with torch.no_grad():
        logits, more = clip(photos64), wide(photos64)
    assert more.shape == (2, len(PROMPTS) + 1)
    torch.testing.assert_close(more[:, :len(PROMPTS)], logits)
    prompt = targets.Class(1, classes=wide.classes)
    torch.testing.assert_close(prompt.bind(2).confidence(more), logits.softmax(1)[:, 1])
    torch.testing.assert_close(prompt.bind(2).score(more), logits[:, 1])
    assert targets.Class(classes=wide.classes).bind(2).resolve(more).index == tuple(logits.argmax(1).tolist())
    text = wide.text("a blue car")
    assert text.index == len(PROMPTS)
    alone = clip.with_prompts(["a blue car"])
    with torch.no_grad():
        torch.testing.assert_close(text.bind(2).score(more), alone(photos64)[:, 0])
        cos = F.cosine_similarity(alone.image_features(photos64), alone.text_features[:1], dim=-1)
    torch.testing.assert_close(text.bind(2).similarity(more), cos, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["open_clip", "siglip"])
def test_deletion_reads_the_texts_confidence(models: dict, photos64: Tensor, kind: str) -> None:
    """Deletion / insertion of a text's map starts from the pair's own confidence on the intact
    image (not a softmax over the prompts)."""
    from galleryvis.metrics import deletion_insertion

    clip = wrap(models, kind)
    target = clip.text("a red car")
    maps = galleryvis.attribute(clip, photos64, "gradcam", target)
    result = deletion_insertion(clip, photos64, maps, target, steps=4)
    with torch.no_grad():
        expected = target.bind(2).confidence(clip(photos64))
    np.testing.assert_allclose(result.deletion_curve[:, 0], expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(result.insertion_curve[:, -1], expected.numpy(), rtol=1e-5)


class Embedding(nn.Module):
    """The wrapper's vision tower alone: the image embedding pytorch-grad-cam's similarity target reads."""

    def __init__(self, clip: ImageText) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, x: Tensor) -> Tensor:
        return self.clip.image_features(x)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_gradcam_agrees_with_pytorch_grad_cam(models: dict, photos64: Tensor, kind: str) -> None:
    """Ours on the similarity with "a red car" (targets.Text) and on the best prompt; theirs on
    the cosine of the image embedding with the text's (a constant factor and offset apart from
    the logit, which Grad-CAM's ReLU-free weights scale and r ignores)."""
    clip = wrap(models, kind)
    layer, prefix = LAYERS[kind]
    with torch.no_grad():
        best = clip(photos64).argmax(1).tolist()
    ours = {"text": galleryvis.attribute(clip, photos64, "gradcam", clip.text("a red car"), layer),
            "top1": galleryvis.attribute(clip, photos64, "gradcam", None, layer)}
    embed = Embedding(clip)
    with frozen(embed), pgc.GradCAM(model=embed, target_layers=[clip.get_submodule(layer)],
                                    reshape_transform=reshape_transform(8, 8, prefix)) as cam:
        def similar(prompts: list[int]) -> list:
            return [lambda out, i=i: F.cosine_similarity(out, clip.text_features[i], dim=0) for i in prompts]

        theirs = {"text": cam(input_tensor=photos64.clone().requires_grad_(True), targets=similar([2, 2])),
                  "top1": cam(input_tensor=photos64.clone().requires_grad_(True), targets=similar(best))}
    for what in ours:
        check(f"gradcam {what}/{kind} {layer}", pearson(ours[what], theirs[what]))


def reference_probs(clip: ImageText, x: Tensor, prompt: int) -> tuple[list[Tensor], list[Tensor]]:
    """Each layer's attention probabilities and their gradients of the prompt's logit: open_clip's
    attentions recomputed by test_agreement's ExplicitAttention, Hugging Face's own eager
    attentions (``output_attentions``)."""
    xg = x.clone().requires_grad_(True)
    if clip.kind == "open_clip":
        ref = copy.deepcopy(clip)
        blocks = [m for m in ref.modules() if isinstance(getattr(m, "attn", None), nn.MultiheadAttention)]
        for blk in blocks:
            blk.attn = ExplicitAttention(blk.attn, "mha", blk.attn.num_heads)
        ref(xg)[:, prompt].sum().backward()
        return [b.attn.probs.detach() for b in blocks], [b.attn.probs.grad for b in blocks]
    out = clip.vision_model(pixel_values=xg, output_attentions=True)
    image = F.normalize(clip.visual_projection(out.pooler_output), dim=-1)
    probs = list(out.attentions)
    grads = torch.autograd.grad((clip.scale * image @ clip.text_features[prompt]).sum(), probs)
    return [p.detach() for p in probs], list(grads)


@pytest.mark.parametrize("kind", ["open_clip", "clip"])
def test_attention_maps_agree(models: dict, photos64: Tensor, kind: str) -> None:
    clip = wrap(models, kind)
    probs, grads = reference_probs(clip, photos64, 2)
    rollout = galleryvis.attribute(clip, photos64, "attention_rollout", clip.text("a red car"))
    gradient = galleryvis.attribute(clip, photos64, "attention_gradient", clip.text("a red car"))
    check(f"attention_rollout/{kind}", pearson(rollout, up(rollout_reference(probs, 1, (8, 8)), (64, 64))))
    check(f"attention_gradient/{kind}", pearson(gradient, up(gradient_reference(probs, grads, 1, (8, 8)), (64, 64))))


@pytest.mark.parametrize("technique, message", [
    ("attention_rollout", "attention: only unmasked, batch-first self-attention"),
    ("lrp", "lrp cannot propagate relevance through 'vision_model.head.attention' (MultiheadAttention)"),
])
def test_siglip_attention_pooling_is_refused_in_one_line(models: dict, photos64: Tensor, technique: str,
                                                        message: str) -> None:
    """SigLIP pools with an attention whose query is a learned probe, not self-attention."""
    from galleryvis.errors import LayerError

    with pytest.raises(LayerError, match=re.escape(message)) as info:
        galleryvis.attribute(wrap(models, "siglip"), photos64, technique, 0)
    assert "\n" not in str(info.value)


class HeldNorm(nn.Module):
    """The wrapper with each image embedding divided by its norm on the clean images, a constant."""

    def __init__(self, clip: ImageText, x: Tensor) -> None:
        super().__init__()
        self.clip = clip
        with torch.no_grad():
            self.norms = clip.image_features(x).norm(dim=-1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.clip.scale * (self.clip.image_features(x) / self.norms) @ self.clip.text_features.T


@pytest.mark.parametrize("kind", ["open_clip", "clip"])
def test_lrp_holds_the_embedding_norm_constant(models: dict, photos64: Tensor, kind: str) -> None:
    """AttnLRP through the vision tower and the cosine similarity: the L2 normalization passes
    relevance as a division by the (constant) norm does, so the map equals that of the same
    model with each image's norm fixed; and relevance reaches every image."""
    clip = wrap(models, kind)
    ours = galleryvis.attribute(clip, photos64, "lrp", clip.text("a red car"))
    held = galleryvis.attribute(HeldNorm(clip, photos64), photos64, "lrp", 2)
    torch.testing.assert_close(ours, held)
    assert (ours.flatten(1).abs().sum(1) > 0).all()


def lxt_rules(kind: str, attention: str, lxt: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """lxt's AttnLRP (or CP-LRP) patches on the classes of an open_clip or Hugging Face CLIP
    vision tower, undone by ``monkeypatch``: the identity rule on GELU / QuickGELU, LayerNorm with
    its std held, and inside attention q and k's gradient quartered and v's halved (AttnLRP, lxt's
    ``wrap_attention_forward``) or q and k held (CP-LRP). lxt 2.1 has no patch for open_clip's
    ``nn.MultiheadAttention`` under AttnLRP (only ``cp_multi_head_attention_forward``), so its
    forward is written out here with the packed projections and lxt's wrapper around the attention."""
    if kind == "clip":
        from transformers.activations import QuickGELUActivation
        from transformers.models.clip import modeling_clip

        act, norm = QuickGELUActivation, nn.LayerNorm
        wrap_attention = lxt.wrap_attention_forward if attention == "attnlrp" else lxt.cp_wrap_attention_forward
        monkeypatch.setattr(modeling_clip, "eager_attention_forward",
                            wrap_attention(modeling_clip.eager_attention_forward))
    else:
        act, norm = nn.GELU, open_clip.transformer.LayerNorm
        monkeypatch.setattr(nn.MultiheadAttention, "original_forward", nn.MultiheadAttention.forward, raising=False)
        if attention == "cp":
            monkeypatch.setattr(nn.MultiheadAttention, "forward", lxt.cp_multi_head_attention_forward)
        else:
            attend = lxt.wrap_attention_forward(lambda module, q, k, v: F.scaled_dot_product_attention(q, k, v))

            def forward(self: nn.MultiheadAttention, query: Tensor, *_: object, **__: object) -> tuple[Tensor, None]:
                n, t, d = query.shape  # self-attention, batch first: open_clip passes x as q, k and v
                q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).view(
                    n, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
                return self.out_proj(attend(self, q, k, v).transpose(1, 2).reshape(n, t, d)), None
            monkeypatch.setattr(nn.MultiheadAttention, "forward", forward)
    monkeypatch.setattr(act, "original_forward", act.forward, raising=False)
    monkeypatch.setattr(act, "forward", lxt.non_linear_forward)
    monkeypatch.setattr(norm, "forward", lxt.layer_norm_forward)


@pytest.mark.parametrize("attention", ["attnlrp", "cp"])
@pytest.mark.parametrize("kind", ["open_clip", "clip"])
def test_lrp_equals_lxt_on_clip(photos64: Tensor, lxt_patches: types.ModuleType, monkeypatch: pytest.MonkeyPatch,
                               kind: str, attention: str) -> None:
    """LRP of the logit of "a red car" (scale * cos(image, text)) against lxt 2.1's Gradient x
    Input under its patches (:func:`lxt_rules`), on the tiny models with LayerNorms spread as
    trained (weights around 1, biases around 0). lxt 2.1 has no OpenCLIP or Hugging Face CLIP
    support of its own; its generic patches are applied to the models' modules. The embedding's
    L2 norm is held in both (:class:`HeldNorm` for lxt: lxt 2.1's efficient patches have no rule
    for it; its explicit ``normalize``, the identity rule, holds it too, test_lrp), and so is the
    text embedding: all of the logit's relevance goes to the image."""
    model = trained_like(tiny_open_clip() if kind == "open_clip" else tiny_hf("clip"))
    clip = wrap({kind: model}, kind)
    ours = galleryvis.attribute(clip, photos64, "lrp", 2, rule="epsilon", epsilon=1e-9, attention=attention)
    lxt_rules(kind, attention, lxt_patches, monkeypatch)
    theirs = gradient_times_input(HeldNorm(clip, photos64), photos64, 2)
    monkeypatch.undo()
    check(f"lrp {attention}/{kind} vs lxt", pearson(ours, theirs), 0.9999)
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4 * float(theirs.abs().max()))


@pytest.mark.parametrize("kind", ["open_clip", "clip"])
def test_class_visualization_maximizes_a_prompts_similarity(models: dict, kind: str) -> None:
    """Feature visualization of a prompt raises its similarity; the image is made at any size
    and seen at the one size the model takes (64 px), as on other vision transformers."""
    clip = wrap(models, kind)
    image, trace = galleryvis.synthesize(clip, "class_visualization", target=2, steps=24, size=48, jitter=0,
                                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert image.shape[-2:] == (48, 48)
    assert trace[-4:].mean() > trace[:4].mean(), trace[:, 0].tolist()


# -- sources and the example ----------------------------------------------------------------------
TINY_CONFIG = {"embed_dim": 16, "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16,
                                               "patch_size": 8},
               "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def tiny_checkpoint(folder: Path) -> Path:
    """``tiny.json`` (open_clip's model config format) and a random checkpoint of it, ``tiny.safetensors``."""
    from safetensors.torch import save_file

    (folder / "tiny.json").write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    save_file(tiny_open_clip(3).state_dict(), folder / "tiny.safetensors")
    return folder / "tiny.safetensors"


def test_open_clip_source(tmp_path: Path, photos64: Tensor) -> None:
    """A config file and a checkpoint load as a zero-shot classifier over the prompts, the
    checkpoint's weights exactly; the prompts are part of the fingerprint; errors are one line."""
    path = tiny_checkpoint(tmp_path)
    spec = ModelSpec(name="open_clip:tiny.json", weights=str(path), prompts=tuple(PROMPTS))
    adapter = load_model(spec, tmp_path, torch.device("cpu"), "m.toml: models[0]")
    assert isinstance(adapter.model, ImageText) and adapter.labels == PROMPTS and adapter.size == 64
    assert not adapter.random and path in adapter.files
    reference = wrap({"open_clip": tiny_open_clip(3)}, "open_clip")
    with torch.no_grad():
        torch.testing.assert_close(adapter.model(photos64), reference(photos64))
    other = load_model(ModelSpec(name="open_clip:tiny.json", weights=str(path), prompts=tuple(PROMPTS[:2])),
                       tmp_path, torch.device("cpu"), "m")
    assert other.fingerprint != adapter.fingerprint
    imagenet = load_model(ModelSpec(name="open_clip:tiny.json", weights="none"), tmp_path, torch.device("cpu"), "m")
    assert imagenet.random and len(imagenet.labels) == 1000 and imagenet.labels[281] == "tabby"
    assert imagenet.model.prompts[281] == "a photo of a tabby."  # left out: one template per class
    ensemble = load_model(ModelSpec(name="open_clip:tiny.json", weights="none", prompts="imagenet"), tmp_path,
                          torch.device("cpu"), "m")
    assert ensemble.labels == imagenet.labels
    assert ensemble.model.prompts[281] == tuple(t.format("tabby") for t in IMAGENET_TEMPLATES)
    with pytest.raises(ModelError, match=r'^m: open_clip model tiny.json needs weights = a local checkpoint'):
        load_model(ModelSpec(name="open_clip:tiny.json"), tmp_path, torch.device("cpu"), "m")
    with pytest.raises(ModelError, match="^m: prompts are for image-text models .*resnet18 is not one$"):
        load_model(ModelSpec(name="resnet18", weights="none", prompts=("a cat",)), tmp_path, torch.device("cpu"), "m")


@pytest.mark.parametrize("value, message", [
    ("[]", 'expected an array of texts or "imagenet", got array []'),
    ('"imagenet1k"', 'expected an array of texts or "imagenet", got string'),
    ('["a cat", ""]', 'expected an array of texts or "imagenet"'),
    ('["a cat", "a dog", "a cat"]', "each prompt must be distinct (it is a class); repeated: ['a cat']"),
])
def test_manifest_prompts_errors(tmp_path: Path, value: str, message: str) -> None:
    from galleryvis.config.manifest import ManifestError

    (tmp_path / "m.toml").write_text(f'[[images]]\npath = "x.png"\n[[models]]\nname = "open_clip:ViT-B-32"\n'
                                     f'weights = "none"\nprompts = {value}\n', encoding="utf-8")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ManifestError, match=re.escape(f"models[0].prompts: {message}")):
        load_manifest(tmp_path / "m.toml")


@pytest.mark.parametrize("target, message", [
    ('{ text = "" }', "images[0].target.text: expected a non-empty text to compare the image with, got string ''"),
    ("{ text = 3 }", "images[0].target.text: expected a non-empty text to compare the image with, got integer 3"),
    ('{ text = "a cat", class = 2 }', "images[0].target: a target table gives a text, or a class (and a mask or a "
                                      "box), not both"),
    ('{ txt = "a cat" }', "images[0].target: unknown key 'txt' in a target table (keys: class, mask, box, text)"),
])
def test_manifest_text_target_errors(tmp_path: Path, target: str, message: str) -> None:
    from galleryvis.config.manifest import ManifestError

    (tmp_path / "m.toml").write_text(f'[[images]]\npath = "x.png"\ntarget = {target}\n[[models]]\n'
                                     'name = "resnet18"\nweights = "none"\n', encoding="utf-8")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ManifestError) as exc:
        load_manifest(tmp_path / "m.toml")
    assert [m.split(": ", 1)[1] for m in exc.value.errors] == [message]


def test_a_text_target_needs_an_image_text_model(tmp_path: Path) -> None:
    from galleryvis.build.jobs import load_models
    from galleryvis.config.manifest import ManifestError

    (tmp_path / "m.toml").write_text(f'[[images]]\npath = "{EXAMPLES.parent / "input_images" / "cat.png"}"\n'
                                     'target = { text = "a red car" }\n[[models]]\nname = "resnet18"\n'
                                     'weights = "none"\n', encoding="utf-8")
    with pytest.raises(ManifestError) as exc:
        load_models(load_manifest(tmp_path / "m.toml"))
    assert [m.split(": ", 1)[1] for m in exc.value.errors] == [
        "images[0].target.text: a text is for image-text models; model 'resnet18' is a classification model"]


def hf_folder(kind: str, folder: Path) -> Path:
    """A ``save_pretrained`` folder of the tiny Hugging Face model with a CLIP tokenizer built
    from CLIP's vocabulary (the one open_clip ships)."""
    transformers = pytest.importorskip("transformers")
    inner = open_clip.tokenizer.SimpleTokenizer()
    (folder / "vocab.json").write_text(json.dumps(inner.encoder), encoding="utf-8")
    merges = sorted(inner.bpe_ranks, key=inner.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                           bos_token="<start_of_text>", eos_token="<end_of_text>",
                                           pad_token="<end_of_text>")
    out = folder / kind
    tiny_hf(kind).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hugging_face_image_text_folder(tmp_path: Path, photos64: Tensor, kind: str) -> None:
    folder = hf_folder(kind, tmp_path)
    adapter = load_model(ModelSpec(name=f"hf:{folder.name}", prompts=tuple(PROMPTS)), tmp_path,
                         torch.device("cpu"), "m")
    assert isinstance(adapter.model, ImageText) and adapter.model.kind == kind and adapter.labels == PROMPTS
    with torch.no_grad():
        logits = adapter.model(photos64)
    tokenizer = pytest.importorskip("transformers").AutoTokenizer.from_pretrained(folder)
    torch.testing.assert_close(logits, own_logits(tiny_hf(kind), kind, photos64, PROMPTS, tokenizer),
                               rtol=1e-4, atol=1e-5)


def test_clip_example_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/clip with a tiny open_clip and its random checkpoint saved here, at batch size 8."""
    from galleryvis.build.pipeline import Options, build
    from galleryvis.render import pages

    folder = tmp_path / "examples" / "clip"
    shutil.copytree(EXAMPLES / "clip", folder)
    shutil.copytree(EXAMPLES.parent / "input_images", tmp_path / "input_images")
    tiny_checkpoint(folder)
    text = (folder / "galleryvis.toml").read_text(encoding="utf-8")
    text = text.replace('name = "open_clip:ViT-B-32"', 'name = "open_clip:tiny.json"')
    text = text.replace('weights = "none"', 'weights = "tiny.safetensors"').replace("steps = 16", "steps = 2")
    text += ('\n[[techniques]]\nname = "class_visualization"\ntarget = { text = "a blue boat" }\n'
             'params = { steps = 3, size = 32 }\n')  # a picture of a free text: its similarity maximized
    (folder / "galleryvis.toml").write_text(text, encoding="utf-8")
    monkeypatch.setattr(pages, "_resources", lambda: EXAMPLES.parent / "templates")
    pages._environments.cache_clear()
    try:
        manifest = load_manifest(folder / "galleryvis.toml")
        result = build(manifest, Options(quiet=True, batch_size=8))
    finally:
        pages._environments.cache_clear()
    assert (result.computed, result.failed) == (3 * 1 * 4 + 1, 0)  # images x models x techniques, one picture
    boat = next(j for j in result.jobs if j.tech.name == "class_visualization")
    assert boat.text == "a blue boat" and len(boat.trace) == 3  # the trace: the text's logit, step by step
    page = (folder / "site" / "index.html").read_text(encoding="utf-8")
    assert "a photo of a cat" in page
    gallery = json.loads((folder / "site" / "gallery.json").read_text(encoding="utf-8"))
    text_cells = [c for c in gallery["cells"] if c["target_label"].startswith('text "a red car"')]
    assert sorted(c["technique_id"] for c in text_cells) == ["attention_rollout", "gradcam", "integrated_gradients"]
    assert all(c["target_index"] is None for c in text_cells)
    # the text's cells equal the API's on a model whose one prompt is that text; its header gives the cosine
    adapter = load_model(manifest.models[0], folder, torch.device("cpu"), "m")
    alone = adapter.model.with_prompts(["a red car"])
    x = adapter.preprocess(load_image(EXAMPLES.parent / "input_images" / "rocket.jpg"))[None]
    job = next(j for j in result.jobs if j.text == "a red car" and j.tech.id == "gradcam")
    expected = galleryvis.attribute(alone, x, "gradcam", alone.text("a red car"), job.layer)[0]
    np.testing.assert_allclose(job.result, expected.numpy(), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        cos = F.cosine_similarity(alone.image_features(x), alone.text_features, dim=-1)
    assert text_cells[0]["target_label"] == f'text "a red car", similarity {float(cos):.2f}'
    model_page = html.unescape(next((folder / "site").glob("model-*.html")).read_text(encoding="utf-8"))
    assert f'Text "a red car", similarity {float(cos):.2f}</' in model_page  # the column's header
    # without the free text, every other cell is still in the cache: the prompts' columns are as they were
    text = (folder / "galleryvis.toml").read_text(encoding="utf-8")
    (folder / "galleryvis.toml").write_text(text.replace('target = { text = "a red car" }', 'target = "top1"'),
                                            encoding="utf-8")
    try:
        again = build(load_manifest(folder / "galleryvis.toml"), Options(quiet=True, batch_size=8))
    finally:
        pages._environments.cache_clear()
    assert (again.computed, again.cached) == (0, 2 * 4 + 1)

"""Targets spec: what a map explains is an objective (galleryvis.targets). Every accepted form of
``target=`` gives the map of the class it names; a callable scores the raw output (gradients
only: what reads a confidence says so in one line); per-image objectives survive chunking; LRP
starts from the objective's relevance; and nothing outside galleryvis/targets.py gathers or
softmaxes a model's output."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import galleryvis
from galleryvis import metrics, targets
from galleryvis.targets import Class, Objective, ScoreOnlyError

PACKAGE = Path(galleryvis.__file__).resolve().parent
LAYER = "7"  # tiny_sequential's last ReLU
#: One technique of each way of reading a target, with small sample counts.
FAST: dict[str, dict[str, Any]] = {
    "vanilla": {}, "gradcam": {"layer": LAYER}, "integrated_gradients": {"steps": 4},
    "smoothgrad": {"samples": 4}, "lrp": {}, "deeplift": {}, "occlusion": {"window": 16, "stride": 8},
    "ablationcam": {"layer": LAYER}, "kernel_shap": {"segments": 4, "samples": 8},
    "scorecam": {"layer": LAYER}, "rise": {"masks": 16},
}
#: The techniques above that read a confidence, not a score.
CONFIDENCE = ("scorecam", "rise")
SCORE = [n for n in FAST if n not in CONFIDENCE]


def attribute(model: nn.Module, x: Tensor, name: str, target: Any, **kw: Any) -> Tensor:
    return galleryvis.attribute(model, x, name, target, **{**FAST[name], **kw})


def logit(c: int) -> Callable[[Tensor], Tensor]:
    """A plain callable target, as a user writes one: class ``c``'s logit."""
    return lambda out: out[:, c]


class Probe(Objective):
    """A class read by hand, with a confidence: not a :class:`Class`, so a list mixing it with
    classes stays one objective per row (:class:`galleryvis.targets.PerImage`)."""

    def __init__(self, c: int, n: int | None = None) -> None:
        self.c, self.n = c, n

    def score(self, output: Any) -> Tensor:
        return output[:, self.c]

    def confidence(self, output: Any) -> Tensor:
        return output.float().softmax(1)[:, self.c]

    def rows(self, index: targets.Rows) -> Probe:
        return Probe(self.c, len(range(self.n or 0)[index]) if isinstance(index, slice) else len(index))

    def at(self, i: int) -> Probe:
        return Probe(self.c)


# -- every form names the same class ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["vanilla", "lrp"])
def test_every_form_of_a_class_gives_the_int_forms_map(tiny_seq: nn.Module, tiny_x: Tensor, name: str) -> None:
    ref = attribute(tiny_seq, tiny_x, name, 3)
    for form in ([3, 3, 3, 3], torch.tensor(3), np.array([3, 3, 3, 3]), Class(3), Class([3, 3, 3, 3]),
                 [Class(3)] * 4, [3, Class(3), 3, Class(3)], logit(3), [logit(3), Class(3), 3, logit(3)]):
        torch.testing.assert_close(attribute(tiny_seq, tiny_x, name, form), ref, rtol=0, atol=0, msg=repr(form))


@pytest.mark.parametrize("name", list(FAST))
def test_every_technique_reads_an_objective_per_row(tiny_seq: nn.Module, tiny_x: Tensor, name: str) -> None:
    """The class as an object, and as one objective per image (each row read by its own)."""
    ref = attribute(tiny_seq, tiny_x, name, 3)
    for form in (Class(3), [Probe(3), Class(3), 3, Probe(3)]):
        torch.testing.assert_close(attribute(tiny_seq, tiny_x, name, form), ref, rtol=0, atol=0, msg=repr(form))


@pytest.mark.parametrize("name", ["vanilla", "rise"])
def test_top1_forms(tiny_seq: nn.Module, tiny_x: Tensor, name: str) -> None:
    top1 = tiny_seq(tiny_x).argmax(1).tolist()
    ref = attribute(tiny_seq, tiny_x, name, top1)
    for form in (None, Class(), [None] * 4, [Class()] * 4, [None, top1[1], Class(), top1[3]]):
        torch.testing.assert_close(attribute(tiny_seq, tiny_x, name, form), ref, rtol=0, atol=0, msg=repr(form))


def test_per_image_objects_are_per_image_classes(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    for name in ("vanilla", "occlusion", "rise"):
        torch.testing.assert_close(attribute(tiny_seq, tiny_x, name, [Class(i) for i in (1, 2, 3, 4)]),
                                   attribute(tiny_seq, tiny_x, name, [1, 2, 3, 4]), rtol=0, atol=0)


# -- callables: a score, no confidence --------------------------------------------------------------
@pytest.mark.parametrize("name", SCORE)
def test_a_callable_scores_the_raw_output(tiny_seq: nn.Module, tiny_x: Tensor, name: str) -> None:
    """A contrast of two logits explains, for a linear read-out of the gradient, their difference."""
    contrast = attribute(tiny_seq, tiny_x, name, lambda out: out[:, 3] - out[:, 5])
    assert contrast.shape == attribute(tiny_seq, tiny_x, name, 3).shape and torch.isfinite(contrast).all()
    if name in ("vanilla", "integrated_gradients", "smoothgrad", "deeplift", "lrp"):  # linear in the score
        diff = attribute(tiny_seq, tiny_x, name, 3) - attribute(tiny_seq, tiny_x, name, 5)
        torch.testing.assert_close(contrast, diff, rtol=1e-4, atol=1e-6 * float(diff.abs().max()))


@pytest.mark.parametrize("name", CONFIDENCE)
def test_a_callable_is_refused_in_one_line_where_a_confidence_is_read(tiny_seq: nn.Module, tiny_x: Tensor,
                                                                      name: str) -> None:
    with pytest.raises(ScoreOnlyError, match=f"^{name} reads the target's confidence .* gives only a score") as e:
        attribute(tiny_seq, tiny_x, name, logit(3))
    assert "\n" not in str(e.value)
    with pytest.raises(ScoreOnlyError, match=f"^{name} reads"):  # one per image is no different
        attribute(tiny_seq, tiny_x, name, [Class(3), logit(3), 3, 3])


class Margin(Objective):
    """A score-only objective: class ``c``'s logit over the best other one."""

    def __init__(self, c: int, n: int | None = None) -> None:
        self.c, self.n = c, n

    def score(self, output: Any) -> Tensor:
        others = torch.cat([output[:, :self.c], output[:, self.c + 1:]], 1)
        return output[:, self.c] - others.amax(1)

    def rows(self, index: targets.Rows) -> Margin:
        return Margin(self.c, len(range(self.n or 0)[index]) if isinstance(index, slice) else len(index))

    def at(self, i: int) -> Margin:
        return Margin(self.c)


def test_an_objective_without_a_confidence_is_named_where_one_is_read(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    assert torch.isfinite(attribute(tiny_seq, tiny_x, "vanilla", Margin(3))).all()
    assert not Margin(3).has_confidence and Class(3).has_confidence and Probe(3).has_confidence
    with pytest.raises(ScoreOnlyError, match="^rise reads the target's confidence in \\[0, 1\\], and Margin gives only"):
        attribute(tiny_seq, tiny_x, "rise", Margin(3))
    maps = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ScoreOnlyError, match="^road reads .* and Margin gives only a score"):
        metrics.road(tiny_seq, tiny_x, maps, [Class(1), Margin(3), 2, 2], percentile=20, order="morf")


def test_gradcam_compatible_scorecam_reads_scores_so_a_callable_works(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    torch.testing.assert_close(attribute(tiny_seq, tiny_x, "scorecam", logit(3), weighting="gradcam"),
                               attribute(tiny_seq, tiny_x, "scorecam", 3, weighting="gradcam"), rtol=0, atol=0)


def test_metrics_take_every_form_and_refuse_a_callable_where_they_read_a_confidence(tiny_seq: nn.Module,
                                                                                    tiny_x: Tensor) -> None:
    maps = attribute(tiny_seq, tiny_x, "gradcam", None)
    ref = metrics.deletion_insertion(tiny_seq, tiny_x, maps, 3, steps=4)
    got = metrics.deletion_insertion(tiny_seq, tiny_x, maps, [Class(3)] * 4, steps=4)
    np.testing.assert_array_equal(got.deletion_curve, ref.deletion_curve)
    np.testing.assert_array_equal(got.targets, [3, 3, 3, 3])
    by_logit = metrics.deletion_insertion(tiny_seq, tiny_x, maps, 3, steps=4, score="logit")
    np.testing.assert_array_equal(
        metrics.deletion_insertion(tiny_seq, tiny_x, maps, logit(3), steps=4, score="logit").insertion_curve,
        by_logit.insertion_curve)
    for call, who in ((lambda t: metrics.deletion_insertion(tiny_seq, tiny_x, maps, t, steps=4), "deletion_insertion"),
                      (lambda t: metrics.road(tiny_seq, tiny_x, maps, t, percentile=20, order="morf"), "road")):
        with pytest.raises(ScoreOnlyError, match=f"^{who}.* reads the target's confidence") as e:
            call(logit(3))
        assert "\n" not in str(e.value)
    np.testing.assert_array_equal(metrics.road(tiny_seq, tiny_x, maps, Class(3), percentile=20, order="morf"),
                                  metrics.road(tiny_seq, tiny_x, maps, 3, percentile=20, order="morf"))


def test_sanity_takes_a_callable_target(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    ref = metrics.sanity(tiny_seq, tiny_x[:2], "vanilla", 3, max_steps=2)
    got = metrics.sanity(tiny_seq, tiny_x[:2], "vanilla", logit(3), max_steps=2)
    np.testing.assert_array_equal(got.curve, ref.curve)


# -- rows: chunks, samples, windows and masks -------------------------------------------------------
@pytest.mark.parametrize("name", list(FAST))
def test_the_objectives_rows_survive_chunking(tiny_seq: nn.Module, tiny_x: Tensor, name: str) -> None:
    """Per-image objectives, one of them a callable where the technique reads a score: the map
    of each image does not depend on how many images, samples or masks go through at once."""
    target = [Probe(1), 2, Class(3), Probe(4)] if name in CONFIDENCE else [Probe(1), logit(2), 3, logit(4)]
    whole = attribute(tiny_seq, tiny_x, name, target, batch_size=8)
    got = attribute(tiny_seq, tiny_x, name, target, batch_size=3)  # chunks of 3 + 1 images, samples, masks
    torch.testing.assert_close(got, whole, rtol=1e-4, atol=1e-5 * float(whole.abs().max()))


def test_rows_image_split_and_bind() -> None:
    c = Class([5, 6, 7])
    assert c.rows(torch.tensor([2, 0, 2])).index == (7, 5, 7)
    assert c.image(1, 3).index == (6, 6, 6) and len(c.image(1, 3)) == 3
    assert [p.index for p in c.split(2)] == [(5, 6), (7,)]
    assert Class(4).bind(3).index == (4, 4, 4) and Class(4).n is None
    assert c.at(2).index == 7 and c.at(2).n is None
    with pytest.raises(ValueError, match="target has 3 entries for 4 images"):
        c.bind(4)
    mixed = targets.of([Class(1), logit(2), None], 3)
    assert isinstance(mixed, targets.PerImage) and mixed.needs_output and not mixed.has_confidence
    assert len(mixed.rows([0, 0, 1, 2, 2])) == 5


def test_class_checks_the_output_and_the_index() -> None:
    logits = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"logits of shape \(N, classes\); it returned \(2, 4, 1\)"):
        Class(1).score(logits[..., None])
    with pytest.raises(ValueError, match=r"it returned \(2, 4\)"):  # bound to 3 rows
        Class([1, 2, 3]).score(logits)
    with pytest.raises(ValueError, match=r"target \[1, 4\] out of range for 4 classes"):
        Class([1, 4]).score(logits)
    with pytest.raises(ValueError, match="resolved"):
        Class().score(logits)
    with pytest.raises(TypeError, match="class indices"):
        Class([1.5, 2])
    with pytest.raises(TypeError, match="callable"):
        targets.of("3", 2)
    with pytest.raises(ValueError, match="one score per image"):
        targets.of(lambda out: out, 2).score(logits)


def test_confidence_is_the_softmax_probability_and_relevance_the_one_hot_logit() -> None:
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    c = Class([4, 0, 2])
    rows = torch.arange(3)
    assert torch.equal(c.score(logits), logits[rows, [4, 0, 2]])
    assert torch.equal(c.confidence(logits), logits.softmax(1)[rows, [4, 0, 2]])
    assert torch.equal(Class.probabilities(logits), logits.softmax(1))
    idx = torch.tensor([[4], [0], [2]])
    one_hot = torch.zeros_like(logits).scatter_(1, idx, logits.gather(1, idx))
    assert torch.equal(c.relevance(logits), one_hot)
    assert not torch.signbit(c.relevance(-logits.abs())[c.relevance(-logits.abs()) == 0]).any()  # +0, not -0


# -- the protocol is not about classes ------------------------------------------------------------
class Named(nn.Module):
    """A model whose raw output is a dict, as detection and image-text models return."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.net(x)}


class Entry(Objective):
    """An objective of a dict output: class ``c`` of entry ``key`` (what a new target kind looks like)."""

    def __init__(self, key: str, c: int, n: int | None = None) -> None:
        self.key, self.c, self.n = key, c, n

    def score(self, output: Any) -> Tensor:
        return output[self.key][:, self.c]

    def confidence(self, output: Any) -> Tensor:
        return output[self.key].float().softmax(1)[:, self.c]

    def rows(self, index: targets.Rows) -> Entry:
        return Entry(self.key, self.c, len(range(self.n)[index]) if isinstance(index, slice) else len(index))

    def at(self, i: int) -> Entry:
        return Entry(self.key, self.c)


@pytest.mark.parametrize("name", ["vanilla", "gradcam", "integrated_gradients", "occlusion", "rise", "scorecam"])
def test_a_new_objective_reads_any_output(tiny_seq: nn.Module, tiny_x: Tensor, name: str) -> None:
    layer = f"net.{LAYER}" if "layer" in FAST[name] else None
    got = attribute(Named(tiny_seq).eval(), tiny_x, name, Entry("logits", 3), layer=layer)
    torch.testing.assert_close(got, attribute(tiny_seq, tiny_x, name, 3), rtol=1e-5, atol=1e-6)


def test_a_dict_output_with_a_class_target_says_what_it_needs(tiny_seq: nn.Module, tiny_x: Tensor) -> None:
    with pytest.raises(ValueError, match=r"logits of shape \(N, classes\); it returned dict"):
        galleryvis.attribute(Named(tiny_seq).eval(), tiny_x, "vanilla", 3)


# -- nobody else reads a model's output -------------------------------------------------------------
#: Calls of gather / softmax / log_softmax outside galleryvis/targets.py that are not about a
#: model's output, by (module, function) with the reason; any other such call fails the test.
NOT_OUTPUTS = {
    ("galleryvis/engine/changes/attention.py", "self_attention"): "attention probabilities of a packed self-attention, recomputed",
    ("galleryvis/engine/changes/attention.py", "_hf"): "attention probabilities of a Hugging Face ViT attention, recomputed",
    ("galleryvis/attribution/lrp.py", "_Tracer._attention"): "LRP's decomposition of attention into a softmax "
                                                             "and products (AttnLRP's softmax rule then applies)",
    ("galleryvis/attribution/cam.py", "scorecam"): "pytorch-grad-cam's softmax of the channel weights",
    ("galleryvis/sources/huggingface.py", "Boxes.forward"): "a Hugging Face detector's output turned into "
                                                            "torchvision-style detections (transformers' post-processing)",
}
READERS = {"gather", "softmax", "log_softmax"}


def _reads(path: Path) -> list[tuple[str, int]]:
    """(enclosing function's qualified name, line) of every gather / softmax / log_softmax call."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = scope + [child.name] if isinstance(child, ast.ClassDef) else scope + [child.name, "<locals>"]
                visit(child, inner)
                continue
            if isinstance(child, ast.Call):
                f = child.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
                if name in READERS:
                    where = scope[:-1] if scope and scope[-1] == "<locals>" else scope
                    found.append((".".join(where), child.lineno))
            visit(child, scope)

    visit(ast.parse(path.read_text()), [])
    return found


def _all_reads() -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel.startswith("galleryvis/targets/"):
            continue
        for func, line in _reads(path):
            out.setdefault((rel, func), []).append(line)
    return out


def test_only_targets_gathers_or_softmaxes_a_models_output() -> None:
    unexplained = {f"{m}:{lines[0]} in {f or 'the module'}" for (m, f), lines in _all_reads().items()
                   if (m, f) not in NOT_OUTPUTS}
    assert not unexplained, ("read a model's output through its objective (galleryvis.targets), or list the call "
                             f"in NOT_OUTPUTS with the reason: {sorted(unexplained)}")


def test_every_listed_exception_still_exists() -> None:
    assert not set(NOT_OUTPUTS) - set(_all_reads()), "remove entries that no longer match a call"


def test_the_ast_check_sees_method_and_function_calls(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import torch\nclass A:\n    def f(self, y):\n        return y.softmax(1)\n"
                   "def g(y, t):\n    return torch.gather(y, 1, t)\n")
    assert _reads(src) == [("A.f", 4), ("g", 6)]


def test_targets_is_public() -> None:
    assert "targets" in galleryvis.__all__ and galleryvis.targets is targets

"""The technique registry: one entry per technique name, validated parameters."""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Literal, Mapping, get_args

from galleryvis import families
from galleryvis.families import Inputs
from galleryvis.tasks import DEFAULT_TASKS, TASKS

OutputKind = Literal["input", "cam"]
LayerUse = Literal["none", "one", "many", "optional"]
#: How the gallery shows a technique's raw map (see :mod:`galleryvis.render.postprocess`).
DisplayKind = Literal["cam", "gradient", "signed", "image"]
#: What a technique takes from the engine: the shared forward (``Context.forward``), the
#: shared backward's layer gradients or input gradient (``Context.backward``), or passes of
#: its own (``Context.output`` / ``Context.input_grad`` / the model itself).
Need = Literal["forward", "layer_grad", "input_grad", "passes"]
NEEDS: tuple[str, ...] = get_args(Need)
DISPLAY_KINDS: tuple[str, ...] = get_args(DisplayKind)


class TechniqueError(ValueError):
    """An unknown technique or a bad technique parameter."""


@dataclass(frozen=True)
class Technique:
    """A registered technique: a function plus every fact the engine, the cache and the
    gallery need about it (nothing about a technique is kept anywhere else).

    ``title``: the gallery's row title. ``kind``: how its map is shown. ``needs``: what it
    takes from the engine (:data:`NEEDS`). ``stochastic``: its result depends on a ``seed``
    parameter. ``version``: enters the cache key; raise it when the technique's output
    changes, and only its cells are recomputed. ``fold``: may run with batch norm folded
    into the convolutions (off for techniques that change a layer's output themselves).
    ``split_sign``: the gallery also shows positive and negative saliency. ``doc``: the
    technique's page in Markdown (built-in techniques have ``templates/techniques/<name>.md``;
    without either, the page shows ``summary``). ``group``: the gallery table it is drawn in
    (default: the one of its ``kind``). ``attention``: it reads the model's
    self-attention (transformers only), so a manifest's implicit every-technique list leaves
    it out. ``family``: its :mod:`~galleryvis.families` entry's name; ``inputs``: what a cell of
    it needs from the plan (a target class or a channel, the input image, the model's input
    size; default: its family's). ``tasks``: the model tasks it supports (:mod:`galleryvis.tasks`;
    default: every task but those of :data:`~galleryvis.tasks.OPT_IN`, detection); the others are
    refused in one line before anything is computed. ``tensors``: parameters that also take a
    tensor in the API (D-RISE's ``masks``).
    """

    name: str
    fn: Callable[..., Any]
    output: OutputKind
    layer: LayerUse
    paper: str
    summary: str
    title: str = ""
    kind: DisplayKind = "gradient"
    needs: frozenset[str] = frozenset(NEEDS)
    stochastic: bool = False
    version: int = 1
    fold: bool = True
    split_sign: bool = False
    doc: str = ""
    signed: bool = False
    family: str = "attribution"
    attention: bool = False
    group: str = ""
    inputs: Inputs = Inputs()
    tasks: frozenset[str] = frozenset(DEFAULT_TASKS)
    params: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    tensors: frozenset[str] = frozenset()

    def describe(self) -> dict[str, Any]:
        """A plain-data description (name, parameters and defaults, output kind, paper)."""
        return {
            "name": self.name,
            "family": self.family,
            "output": self.output,
            "layer": self.layer,
            "signed": self.signed,
            "title": self.title,
            "kind": self.kind,
            "needs": sorted(self.needs),
            "stochastic": self.stochastic,
            "attention": self.attention,
            "group": self.group,
            "tasks": sorted(self.tasks),
            "version": self.version,
            "params": dict(self.params),
            "choices": {k: list(v) for k, v in self.choices.items()},
            "paper": self.paper,
            "summary": self.summary,
        }


_REGISTRY: dict[str, Technique] = {}


def technique(
    name: str,
    *,
    output: OutputKind,
    paper: str,
    summary: str,
    layer: LayerUse = "none",
    title: str | None = None,
    kind: DisplayKind | None = None,
    needs: tuple[Need, ...] = NEEDS,  # type: ignore[assignment]
    stochastic: bool = False,
    version: int = 1,
    fold: bool = True,
    split_sign: bool = False,
    doc: str = "",
    signed: bool = False,
    family: str = "attribution",
    choices: Mapping[str, tuple[Any, ...]] | None = None,
    attention: bool = False,
    group: str = "",
    inputs: Inputs | None = None,
    tasks: tuple[str, ...] = DEFAULT_TASKS,
    tensors: tuple[str, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(ctx, **params)`` under ``name``; keyword-only defaults become its parameters.

    ``family`` names one of :data:`~galleryvis.families.FAMILIES`. ``title`` defaults to the
    name in title case; ``kind`` to ``"cam"`` for CAM outputs, else the family's kind;
    ``needs`` to everything the engine offers (declare less, and the shared passes skip what
    nobody needs); ``inputs`` to the family's."""
    try:
        fam = families.named(family)
    except KeyError:
        raise TechniqueError(f"technique {name!r}: family must be one of {', '.join(families.FAMILIES)}, "
                             f"got {family!r}") from None
    if kind is None:
        kind = "cam" if output == "cam" else fam.kind  # type: ignore[assignment]
    if kind not in DISPLAY_KINDS:
        raise TechniqueError(f"technique {name!r}: kind must be one of {', '.join(DISPLAY_KINDS)}, got {kind!r}")
    unknown = set(needs) - set(NEEDS)
    if unknown or not needs:
        raise TechniqueError(f"technique {name!r}: needs must be some of {', '.join(NEEDS)}, got {list(needs)}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TechniqueError(f"technique {name!r}: version must be a positive int, got {version!r}")
    if not tasks or set(tasks) - set(TASKS):
        raise TechniqueError(f"technique {name!r}: tasks must be some of {', '.join(TASKS)}, got {list(tasks)}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise TechniqueError(f"technique {name!r} is registered twice ({_REGISTRY[name].fn.__module__} "
                                 "registered it first)")
        sig = inspect.signature(fn)
        params = {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name != "layer"
        }
        _REGISTRY[name] = Technique(
            name=name, fn=fn, output=output, layer=layer, paper=paper, summary=summary,
            title=title or name.replace("_", " ").title(), kind=kind, needs=frozenset(needs),
            stochastic=stochastic, version=version, fold=fold, split_sign=split_sign, doc=doc,
            signed=signed, family=family, attention=attention, group=group, inputs=inputs or fam.inputs,
            tasks=frozenset(tasks), params=params, choices=dict(choices or {}), tensors=frozenset(tensors),
        )
        return fn

    return deco


def suggest(name: str, options: Iterable[str], *, fold_case: bool = False, first: Collection[str] = ()) -> str:
    """' (did you mean: a, b?)' for up to three close matches of ``name``, else '' (the one
    did-you-mean of galleryvis): the closest first, equally close ones in the order of
    ``options``. ``first``: options ranked before every other close match (the models that load
    offline). ``fold_case``: match ignoring case, suggest the options as they are written."""
    written = {(o.lower() if fold_case else o): o for o in options}
    wanted = str(name).lower() if fold_case else str(name)
    matcher = difflib.SequenceMatcher(b=wanted)
    scored = []
    for order, key in enumerate(written):
        matcher.set_seq1(key)
        if matcher.real_quick_ratio() >= 0.5 and matcher.quick_ratio() >= 0.5 and matcher.ratio() >= 0.5:
            scored.append((written[key] not in first, -matcher.ratio(), order, written[key]))
    close = [option for *_, option in sorted(scored)[:3]]
    return f" (did you mean: {', '.join(close)}?)" if close else ""


#: The modules that register galleryvis's own techniques, imported on the registry's first use.
BUILTIN_MODULES = ("galleryvis.attribution", "galleryvis.synthesis")


@functools.cache
def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def get(name: str) -> Technique:
    """The technique called ``name``; a TechniqueError with suggestions otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise TechniqueError(
            f"unknown technique {name!r}{suggest(name, sorted(_REGISTRY))}"
        ) from None


def names(family: str | None = None) -> list[str]:
    """Registered technique names in registration order, optionally of one family (a name of
    :data:`~galleryvis.families.FAMILIES`)."""
    _load_builtins()
    wanted = None if family is None else families.named(family)
    return [n for n, t in _REGISTRY.items() if wanted is None or families.named(t.family) is wanted]


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or isinstance(default, tuple):
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def resolve_params(tech: Technique, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with ``params``; unknown names, wrong types and bad choices raise."""
    out = dict(tech.params)
    for key, value in (params or {}).items():
        if key not in tech.params:
            raise TechniqueError(
                f"{tech.name}: unknown parameter {key!r}{suggest(key, list(tech.params))}"
                f"; known: {', '.join(tech.params) or 'none'}"
            )
        default = tech.params[key]
        if _is_tensor(value) and (key in tech.choices or key in tech.tensors):  # e.g. a baseline tensor
            out[key] = value
            continue
        if not _type_ok(default, value):
            raise TechniqueError(
                f"{tech.name}: parameter {key!r} must be {type(default).__name__}, "
                f"got {type(value).__name__} {value!r}"
            )
        if key in tech.choices and value not in tech.choices[key]:
            raise TechniqueError(
                f"{tech.name}: parameter {key!r} must be one of "
                f"{', '.join(map(repr, tech.choices[key]))}, got {value!r}"
            )
        out[key] = float(value) if isinstance(default, float) else value
    return out


def _is_tensor(value: Any) -> bool:
    return type(value).__name__ == "Tensor"

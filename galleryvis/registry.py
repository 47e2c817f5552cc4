"""The technique registry: one entry per technique name, validated parameters."""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

OutputKind = Literal["input", "cam"]
LayerUse = Literal["none", "one", "many", "optional"]


class TechniqueError(ValueError):
    """An unknown technique or a bad technique parameter."""


@dataclass(frozen=True)
class Technique:
    """A registered technique: a function plus what the engine needs to know about it."""

    name: str
    fn: Callable[..., Any]
    output: OutputKind
    layer: LayerUse
    paper: str
    summary: str
    signed: bool = False
    family: str = "attribution"
    params: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """A plain-data description (name, parameters and defaults, output kind, paper)."""
        return {
            "name": self.name,
            "family": self.family,
            "output": self.output,
            "layer": self.layer,
            "signed": self.signed,
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
    signed: bool = False,
    family: str = "attribution",
    choices: Mapping[str, tuple[Any, ...]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(ctx, **params)`` under ``name``; keyword-only defaults become its parameters."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise TechniqueError(f"technique {name!r} is registered twice")
        sig = inspect.signature(fn)
        params = {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name != "layer"
        }
        _REGISTRY[name] = Technique(
            name=name, fn=fn, output=output, layer=layer, paper=paper, summary=summary,
            signed=signed, family=family, params=params, choices=dict(choices or {}),
        )
        return fn

    return deco


def suggest(name: str, options: list[str] | tuple[str, ...]) -> str:
    """' (did you mean: a, b?)' for close matches of ``name``, else ''."""
    close = difflib.get_close_matches(str(name), list(options), n=3, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def get(name: str) -> Technique:
    """The technique called ``name``; a TechniqueError with suggestions otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise TechniqueError(
            f"unknown technique {name!r}{suggest(name, sorted(_REGISTRY))}"
        ) from None


def names(family: str | None = None) -> list[str]:
    """Registered technique names in registration order, optionally of one family."""
    return [n for n, t in _REGISTRY.items() if family is None or t.family == family]


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
        if _is_tensor(value) and key in tech.choices:  # e.g. a baseline tensor
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

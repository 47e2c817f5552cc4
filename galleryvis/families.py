"""Technique families: the facts every family of techniques declares.

A technique's registry entry names its family (``attribution``: maps of where the evidence for
a class lies; ``synthesis``: images optimized or reconstructed through the model; ``concepts``:
what the model saw at a layer, channel by channel). The family
says what a cell of its techniques needs from the plan (:class:`Inputs`, the default of its
techniques), which public function computes it, what the cache stores for it, how the gallery
shows it and whether it is scored; how its cells are computed is the compute stage's
(:data:`galleryvis.build.executor.COMPUTE`, by family name). Every other module asks the family
(``FAMILIES[tech.family]``, ``job.family``) and none compares a family's name
(``tests/test_layout.py`` checks it). Imports nothing but the standard library, so every layer
reads the families.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from galleryvis.build.jobs import Job

#: What a technique explains or optimizes: a ``target`` class or a ``channel`` of its layer.
UnitKind = Literal["channel", "target"]
#: Whether a technique needs, accepts or refuses an input image.
ImageUse = Literal["required", "optional", "none"]


@dataclass(frozen=True)
class Inputs:
    """What a cell of a technique needs from the plan besides its layer (the registry's
    ``layer``): its ``unit`` (``unit_required``: a caller must give one), whether it needs,
    accepts or refuses the input ``image``, and whether a gallery makes it at the model's input
    size (``model_size``: its ``size`` parameter, unless the manifest sets one)."""

    unit: UnitKind | None = "target"
    unit_required: bool = False
    image: ImageUse = "required"
    model_size: bool = False


class Family(Protocol):
    """A family of techniques. ``name``: the registry's ``family``. ``title``: the gallery
    table of its techniques. ``kind``: the display kind of its techniques that declare none and
    are no CAM (their picture variants follow from it). ``inputs``: what its cells need from the
    plan, unless a technique declares its own. ``api``: the public function that computes it
    (``galleryvis.<api>``). ``stores``: the cache entry's ``covers`` kind; ``keeps``: the job
    fields a cached cell keeps beside its array. ``scored``: its maps get the faithfulness
    scores and the ranking; ``transfer_ranked``: its class images are ranked by the gallery's
    other models. ``split_by_kind``: the gallery draws one table per display kind (with a
    title in the grid's titles) instead of one for the family; ``headline``: the landing page
    shows its techniques; ``reference_examples``: its rows' concept atlases show each concept's
    reference examples (a reference pass per model, layer and reference set)."""

    name: str
    title: str
    kind: str
    inputs: Inputs
    api: str
    stores: str
    keeps: tuple[str, ...]
    scored: bool
    transfer_ranked: bool
    split_by_kind: bool
    headline: bool
    reference_examples: bool

class Attribution:
    """Maps of where a model's evidence for a class lies: cells of one model and technique set
    computed in chunks of images, every technique of a chunk in one ``attribute_calls`` call
    (sharing their passes); one failing technique or image isolated from the others, the chunk
    halved on out-of-memory."""

    name = "attribution"
    title = "Attribution maps"
    kind = "gradient"
    inputs = Inputs()
    api = "attribute"
    stores = "map"
    keeps: tuple[str, ...] = ()
    scored = True
    transfer_ranked = False
    split_by_kind = True
    headline = True
    reference_examples = False

class Synthesis:
    """Images optimized or reconstructed through a model (feature visualization): each cell
    alone through ``synthesize``, for the image's own class (a ``target`` unit) or the channel
    most active on the image (a ``channel`` unit)."""

    name = "synthesis"
    title = "Feature visualization"
    kind = "image"
    inputs = Inputs(unit=None, image="none")
    api = "synthesize"
    stores = "synthesis"
    keeps = ("trace", "unit")
    scored = False
    transfer_ranked = True
    split_by_kind = False
    headline = False
    reference_examples = False

class ConceptFamily:
    """What the model saw at a layer, not only where (Concept Relevance Propagation): a cell holds
    the image's top concepts (channels), each with its conditional map, its share of the layer's
    relevance and the target's confidence drop when it is removed, beside the median drop for
    random channels; cells of one model and row computed in chunks of images through
    ``concepts``."""

    name = "concepts"
    title = "Concepts"
    kind = "signed"
    inputs = Inputs()
    api = "concepts"
    stores = "concepts"
    keeps = ("concepts",)
    scored = False
    transfer_ranked = False
    split_by_kind = False
    headline = False
    reference_examples = True

#: Every family by name, in the order a build computes them.
_ALL: tuple[Family, ...] = (Attribution(), Synthesis(), ConceptFamily())
FAMILIES: Mapping[str, Family] = {f.name: f for f in _ALL}


def named(name: str) -> Family:
    """The family called ``name``; a KeyError naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown technique family {name!r}; families are {', '.join(FAMILIES)}") from None


def partition(jobs: Sequence[Job]) -> list[tuple[Family, list[Job]]]:
    """Each family that has jobs, in :data:`FAMILIES` order, with its jobs in their order."""
    by_family: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_family[job.family.name].append(job)
    return [(f, by_family[f.name]) for f in FAMILIES.values() if by_family[f.name]]

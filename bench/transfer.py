"""``python -m bench.transfer``: do class visualizations transfer to models they were not made with?

Each setting of ``class_visualization`` makes one image per (maker, class) with the maker's real
ImageNet weights at the maker's input size; every judge then classifies it at the judge's own
input size (bilinear, antialiased resize) and the target's rank among the 1000 classes is
recorded (1 = top-1). A picture of the class should rank high for models it was not made with;
an adversarial pattern ranks high only for its maker. Makers and judges: Lite0 -> Lite1, Lite2,
and Lite1, Lite2 -> Lite0. See docs and templates/techniques/class_visualization.md for results.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

import galleryvis
from galleryvis.sources.labels import imagenet_labels
from galleryvis.sources.lite import VARIANTS, efficientnet_lite
from galleryvis.synthesis.transfer import class_rank

#: A dozen ImageNet classes: the default gallery's four (Egyptian cat, espresso, missile, tripod),
#: the seed README's flamingo and seven of varied kinds (animals, food, objects, scenes).
CLASSES: tuple[int, ...] = (285, 967, 657, 872, 130, 1, 31, 107, 504, 817, 951, 980)

#: Who classifies whose images: maker -> judges.
PAIRS: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": ("efficientnet_lite1", "efficientnet_lite2"),
    "efficientnet_lite1": ("efficientnet_lite0",),
    "efficientnet_lite2": ("efficientnet_lite0",),
}

#: ``class_visualization`` parameters per setting name; ``size`` is the maker's input size unless
#: given. ``fft`` is the default; ``fft/gallery`` the default gallery's cheaper setting (about the
#: cost of the old default); ``pixel/yosinski`` the default before issue 21 (100 steps at 160 px).
SETTINGS: dict[str, dict[str, Any]] = {
    "fft": {},
    "fft/gallery": {"steps": 48, "lr": 0.08},
    "pixel/yosinski": {"param": "pixel", "regularization": "yosinski", "steps": 100, "size": 160},
    "pixel/none": {"param": "pixel", "regularization": "none"},
    "pixel/l1": {"param": "pixel", "regularization": "l1"},
    "pixel/l2": {"param": "pixel", "regularization": "l2"},
}


@dataclass(frozen=True)
class Record:
    """One image: who made it, with which setting, for which class; the seconds it took, the
    maker's own softmax probability of the target, and its rank (1 = top) under each judge."""

    setting: str
    maker: str
    target: int
    seconds: float
    maker_prob: float
    ranks: dict[str, int]


def measure(classes: Sequence[int], settings: Sequence[str], pairs: dict[str, tuple[str, ...]] = PAIRS,
            seed: int = 0) -> list[Record]:
    """One :class:`Record` per (setting, maker, class), each also printed to stderr as it comes;
    models load once each."""
    names = sorted(set(pairs) | {j for js in pairs.values() for j in js})
    models = {n: efficientnet_lite(n) for n in names}
    records = []
    for setting in settings:
        for maker, judges in pairs.items():
            size = VARIANTS[maker].size
            params = {"size": size, **SETTINGS[setting]}
            for target in classes:
                t0 = time.perf_counter()
                image, _ = galleryvis.synthesize(models[maker], "class_visualization", target=target,
                                                 seed=seed, **params)
                seconds = time.perf_counter() - t0
                _, prob = class_rank(models[maker], image, target, size=size)
                ranks = {j: class_rank(models[j], image, target, size=VARIANTS[j].size)[0] for j in judges}
                records.append(Record(setting, maker, target, seconds, prob, ranks))
                print(json.dumps(asdict(records[-1])), file=sys.stderr, flush=True)
    return records


def summary(records: Sequence[Record]) -> dict[str, float]:
    """Over (class, judge) pairs: the fraction with the target in the top 5 and the median rank;
    over images: the fraction whose maker gives the target p >= 0.9, the smallest such p, and
    the mean seconds per image."""
    ranks = [r for rec in records for r in rec.ranks.values()]
    return {"pairs": len(ranks), "top5": sum(r <= 5 for r in ranks) / len(ranks),
            "median_rank": statistics.median(ranks),
            "maker_p90": sum(rec.maker_prob >= 0.9 for rec in records) / len(records),
            "min_maker_prob": min(rec.maker_prob for rec in records),
            "seconds": statistics.mean(rec.seconds for rec in records)}


def _short(model: str) -> str:
    return model.replace("efficientnet_lite", "Lite")


def report(records: Sequence[Record]) -> str:
    """Markdown: one summary row per setting, then each image's ranks."""
    labels = imagenet_labels()
    lines = ["| setting | top 5 | median rank | maker p >= 0.9 | min maker p | s / image |", "|---|---|---|---|---|---|"]
    settings = list(dict.fromkeys(r.setting for r in records))
    for setting in settings:
        s = summary([r for r in records if r.setting == setting])
        lines.append(f"| `{setting}` | {s['top5']:.0%} of {s['pairs']} | {s['median_rank']:g} | "
                     f"{s['maker_p90']:.0%} | {s['min_maker_prob']:.2f} | {s['seconds']:.1f} |")
    lines += ["", "| setting | maker | class | maker p | ranks |", "|---|---|---|---|---|"]
    for r in records:
        ranks = ", ".join(f"{_short(j)} {k}" for j, k in r.ranks.items())
        lines.append(f"| `{r.setting}` | {_short(r.maker)} | {r.target} {labels[r.target]} | "
                     f"{r.maker_prob:.2f} | {ranks} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__.splitlines()[0])
    ap.add_argument("--classes", default=",".join(map(str, CLASSES)), help="comma-separated class indices")
    ap.add_argument("--settings", default="fft,fft/gallery,pixel/yosinski", help=f"some of {', '.join(SETTINGS)}")
    ap.add_argument("--makers", default=",".join(PAIRS), help="which makers of PAIRS to run")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--json", help="write every record here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS] + [m for m in args.makers.split(",") if m not in PAIRS]
    if unknown:
        ap.error(f"unknown setting or maker: {', '.join(unknown)}")
    pairs = {m: PAIRS[m] for m in args.makers.split(",")}
    records = measure([int(c) for c in args.classes.split(",")], settings, pairs)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([asdict(r) for r in records], f, indent=1)
    print(report(records))


if __name__ == "__main__":
    main()

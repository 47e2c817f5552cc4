"""``python -m bench``: speed and memory of galleryvis against a seed-style loop and the peers.

Run from the repository root. ``python -m bench --quick`` checks that everything runs (about
two minutes on two cores); ``python -m bench --markdown`` prints the tables for the README.
See bench/README.md for what each column means.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .cases import DETECT_ROWS, ORDER, PER_CHANNEL, SEGMENT_ROWS

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("attribution", "segmentation", "metrics", "synthesis", "rebuild", "cluster")
#: The segmentation section's model (issue 30): a torchvision segmentation model, random weights.
SEGMENTATION_MODEL = "deeplabv3_mobilenet_v3_large"
#: The detection section's model (issue 31), full run and quick: a torchvision detector, random weights.
DETECTION_MODELS = {"full": "fasterrcnn_resnet50_fpn", "quick": "fasterrcnn_mobilenet_v3_large_fpn"}
#: Sections run only when asked for (``--sections`` or their flag): minutes each.
EXTRA_SECTIONS = ("default", "quantus", "detection")

FULL = {"size": 224, "repeats": 5, "budget": 3.0, "images": 1,
        "settings": {"ig_steps": 100, "sg_samples": 50, "sg_sigma": 0.15, "syn_steps": 10,
                     "occ_window": 32, "occ_stride": 16, "rise_masks": 1000, "gs_samples": 50, "gs_stdev": 0.1,
                     "shap_samples": 256, "shap_segments": 49, "drise_masks": 256, "drise_cells": 16},
        "cases": list(ORDER)}
QUICK = {"size": 112, "repeats": 2, "budget": 1.0, "images": 1,
         "settings": {"ig_steps": 8, "sg_samples": 4, "sg_sigma": 0.15, "syn_steps": 3,
                      "occ_window": 32, "occ_stride": 16, "rise_masks": 32, "gs_samples": 4, "gs_stdev": 0.1,
                      "shap_samples": 16, "shap_segments": 16, "drise_masks": 64, "drise_cells": 16},
         "cases": [c for c in ORDER if c not in PER_CHANNEL]}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings (112 px, IG-8, SmoothGrad-4, no Score-CAM, "
                   "fewer repeats, 1-image rebuild): checks that everything runs")
    p.add_argument("--models", default="vgg16,resnet50,alexnet", help="torchvision model names (default: "
                   "%(default)s; the issue's seed numbers for IG and SmoothGrad were taken on AlexNet)")
    p.add_argument("--seg-model", default=SEGMENTATION_MODEL, help="the segmentation section's torchvision "
                   "segmentation model (default %(default)s; also fcn_resnet50, lraspp_mobilenet_v3_large, ...)")
    p.add_argument("--det-model", help="the detection section's torchvision detector (default "
                   f"{DETECTION_MODELS['full']}; quick {DETECTION_MODELS['quick']}; also retinanet_resnet50_fpn, ...)")
    p.add_argument("--drise-masks", type=int, help="D-RISE's masks in the detection section (default 256; quick 64)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto = cpu and cuda when available")
    p.add_argument("--cases", help=f"comma list of rows (default: all; quick: all but scorecam and ablationcam): {', '.join(ORDER)}")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma list of %(default)s (the default), and default: "
                   "the default gallery's cold build (--default-gallery), quantus: each metric against Quantus 0.6")
    p.add_argument("--rebuild", action="store_true", help="only the incremental rebuild section")
    p.add_argument("--rebuild-manifest", help="'default' (the embedded default gallery, issue 5's measure) or a "
                   "manifest path (its site/ is rewritten); default: a small generated gallery")
    p.add_argument("--cluster", action="store_true", help="only the local-vs-Ray section")
    p.add_argument("--cluster-manifest", help="the local-vs-Ray section's gallery: 'default' (the embedded default "
                   "gallery, issue 16's measure; the full run's choice) or a manifest path; quick: a small generated one")
    p.add_argument("--default-gallery", action="store_true", help="only the default gallery's cold build against "
                   "the floor of --floor-passes passes of EfficientNet-Lite0 (issue 35: at most 2,000 of them)")
    p.add_argument("--floor-passes", type=int, help="passes the floor times, half before the build and half after "
                   "(default 2000; quick 200)")
    p.add_argument("--keep-site", type=Path, help="copy the default gallery section's built site to this folder")
    p.add_argument("--markdown", action="store_true", help="GitHub Markdown tables (for the README)")
    p.add_argument("--json", type=Path, help="also write every raw record to this file")
    p.add_argument("--size", type=int, help="input size in pixels (default 224; quick 112)")
    p.add_argument("--images", type=int, help="images per call (default 1, as the seed's batch 1)")
    p.add_argument("--batch-size", type=int, default=8, help="galleryvis batch_size and the peers' internal "
                   "batch (default %(default)s)")
    p.add_argument("--repeats", type=int, help="timed calls after the warm-up, at most (default 5; quick 2)")
    p.add_argument("--budget", type=float, help="seconds one measurement may spend on repeats (default 3; quick 1); "
                   "a call slower than this runs once")
    p.add_argument("--ig-steps", type=int, help="integrated gradients steps (default 100; quick 8)")
    p.add_argument("--sg-samples", type=int, help="SmoothGrad samples (default 50; quick 4)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="what the attribution and segmentation "
                   "tables time: wall-clock seconds (the default) or the process's CPU seconds, all threads (steadier "
                   "on a shared machine; with --threads 1, the work itself; CPU only)")
    p.add_argument("--seed", type=int, default=0, help="weights and noise seed (default %(default)s)")
    p.add_argument("--isolate", action="store_true", help="a fresh process per measurement (slower; the "
                   "default is one process per model and device)")
    p.add_argument("--seed-scorecam", action="store_true", help="also time the seed-style Score-CAM "
                   "(one unbatched forward per channel; minutes)")
    return p.parse_args(argv)


def devices(arg: str) -> list[str]:
    import torch

    if arg == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = [d.strip() for d in arg.split(",") if d.strip()]
    if "cuda" in out and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch.cuda.is_available() is False")
    return out


def run_worker(spec: dict[str, Any], log: list[str]) -> list[dict[str, Any]]:
    """Start ``python -m bench.worker`` and collect its JSON lines (progress goes to stderr)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen([sys.executable, "-m", "bench.worker", json.dumps(spec)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = []
    assert proc.stdout is not None
    tag = f"{spec['model']}/{spec['device']}"
    for line in proc.stdout:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        records.append(r)
        if r["type"] == "result":
            what = f"{r['per_image']:.3f} s/image" if "per_image" in r else (r.get("skipped") or r.get("error"))
            print(f"  [{tag}] {r['case']} / {r['label']}: {what}", file=sys.stderr, flush=True)
        elif r["type"] == "extra":
            print(f"  [{tag}] {r['name']}: done", file=sys.stderr, flush=True)
    err = proc.stderr.read() if proc.stderr else ""
    proc.wait()
    if proc.returncode or any(r["type"] == "fatal" for r in records):
        log.append(f"{tag}: worker exited {proc.returncode}:\n{err[-2000:]}")
    elif err.strip():
        log.append(f"{tag} (stderr):\n{err[-1500:]}")
    return records


def header(args: argparse.Namespace, rep: Any) -> str:
    import torch

    from . import peers
    from .common import memory_label

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vers = ", ".join(f"{n} {peers.version(n) or 'not installed'}" for n in ("galleryvis", "captum", "grad-cam"))
    lines = [
        f"galleryvis bench{' (quick)' if args.quick else ''} · {time.strftime('%Y-%m-%d %H:%M')} · "
        f"torch {torch.__version__} · {vers}",
        f"CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {args.threads or torch.get_num_threads()}"
        + (f" · CUDA: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        ("s/image: median CPU seconds of the process (all threads, --clock cpu) of the timed calls"
         if args.clock == "cpu" else "s/image: median seconds of the timed calls")
        + " (after one warm-up call) divided by the images per call; "
        "runs: timed calls (* = a single call, slower than the budget, warm-up only)",
        f"peak MB: {memory_label(torch.device('cpu'))}"
        + ("; on CUDA: " + memory_label(torch.device("cuda")) if torch.cuda.is_available() else ""),
        "speedup: that implementation's time / galleryvis's time (> 1: galleryvis is faster)",
    ]
    load = _load()
    if load is not None and load > (os.cpu_count() or 1) * 0.5:
        lines.append(f"WARNING: load average {load:.1f} on {os.cpu_count()} cores before the run: "
                     "other processes share the CPU, timings are noisy")
    return rep.join(lines)


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _task_section(section: str, table: dict[str, str], model: str, args: argparse.Namespace, cfg: dict[str, Any],
                  dump: dict[str, Any], log: list[str], rep: Any, settings: Any) -> None:
    """The segmentation or detection section: ``table``'s rows (classifier case -> the task's
    row) that ``--cases`` selects, on ``model``, on each device, printed as one model's table."""
    from .report import model_table

    rows = [row for case, row in table.items() if case in cfg["cases"]]
    if not rows:
        print(f"{section}: skipped (its rows are {', '.join(table)}; --cases has neither)", flush=True)
    for device in devices(args.device) if rows else []:
        spec = {"model": model, "device": device, "size": cfg["size"], "images": cfg["images"],
                "threads": args.threads, "seed": args.seed, "batch_size": args.batch_size,
                "repeats": cfg["repeats"], "budget": cfg["budget"], "settings": cfg["settings"],
                "cases": rows, "extras": [], "seed_scorecam": False, "clock": args.clock}
        print(f"running {model} on {device} ...", file=sys.stderr, flush=True)
        records = _run_model(spec, args.isolate, log)
        dump["runs"].append({"spec": spec, "records": records})
        print(model_table(rep, records, settings), flush=True)

def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    cfg = json.loads(json.dumps(QUICK if args.quick else FULL))
    for key in ("size", "repeats", "budget", "images"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.ig_steps:
        cfg["settings"]["ig_steps"] = args.ig_steps
    if args.sg_samples:
        cfg["settings"]["sg_samples"] = args.sg_samples
    if args.drise_masks:
        cfg["settings"]["drise_masks"] = args.drise_masks
    det_model = args.det_model or DETECTION_MODELS["quick" if args.quick else "full"]
    if args.cases:
        cfg["cases"] = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = set(cfg["cases"]) - set(ORDER)
        if unknown:
            sys.exit(f"error: unknown cases {sorted(unknown)}; known: {', '.join(ORDER)}")
        for case in PER_CHANNEL:
            cfg["settings"][f"{case}_everywhere"] = case in cfg["cases"]  # asked for by name
    sections = {"rebuild"} if args.rebuild else {"cluster"} if args.cluster else {"default"} if args.default_gallery \
        else {s.strip() for s in args.sections.split(",")}
    unknown_sections = sections - set(SECTIONS) - set(EXTRA_SECTIONS)
    if unknown_sections:
        sys.exit(f"error: unknown sections {sorted(unknown_sections)}; known: {', '.join(SECTIONS + EXTRA_SECTIONS)}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.clock == "cpu" and "cuda" in devices(args.device):
        sys.exit("error: --clock cpu times CPU seconds; pass --device cpu")
    import torchvision

    unknown_models = {m for m in models if not m.startswith("timm:")} - set(
        torchvision.models.list_models(torchvision.models))
    if unknown_models:
        sys.exit(f"error: unknown torchvision classification models {sorted(unknown_models)} "
                 "(timm models: timm:NAME)")
    if "segmentation" in sections and args.seg_model not in torchvision.models.list_models(
            torchvision.models.segmentation):
        sys.exit(f"error: --seg-model {args.seg_model!r} is not a torchvision segmentation model; known: "
                 f"{', '.join(torchvision.models.list_models(torchvision.models.segmentation))}")

    if "detection" in sections and det_model not in torchvision.models.list_models(torchvision.models.detection):
        sys.exit(f"error: --det-model {det_model!r} is not a torchvision detector; known: "
                 f"{', '.join(torchvision.models.list_models(torchvision.models.detection))}")

    from .report import Report, checks_block, cluster_table, extras_table, first_table, model_table, rebuild_table

    rep = Report(markdown=args.markdown)

    t_start = time.perf_counter()
    log: list[str] = []
    dump: dict[str, Any] = {"config": cfg, "args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    print(header(args, rep), flush=True)

    settings = {**cfg["settings"], "size": cfg["size"], "images": cfg["images"], "batch_size": args.batch_size,
                "seed": args.seed}
    if sections & {"attribution", "metrics", "synthesis"}:
        for device in devices(args.device):
            for i, model in enumerate(models):
                extras = [s for s in ("metrics", "synthesis") if s in sections] if i == 0 else []
                spec = {"model": model, "device": device, "size": cfg["size"], "images": cfg["images"],
                        "threads": args.threads, "seed": args.seed, "batch_size": args.batch_size,
                        "repeats": cfg["repeats"], "budget": cfg["budget"], "settings": cfg["settings"],
                        "cases": cfg["cases"] if "attribution" in sections else [], "extras": extras,
                        "seed_scorecam": args.seed_scorecam, "clock": args.clock}
                print(f"running {model} on {device} ...", file=sys.stderr, flush=True)
                records = _run_model(spec, args.isolate, log)
                dump["runs"].append({"spec": spec, "records": records})
                if "attribution" in sections:
                    print(model_table(rep, records, settings), flush=True)
                refs = {r["impl"]: r for r in records if r["type"] == "result" and r["case"] == "reference"}
                extra = extras_table(rep, records, refs, model, device)
                if extra:
                    print(extra, flush=True)
    for section, table, model in (("segmentation", SEGMENT_ROWS, args.seg_model), ("detection", DETECT_ROWS, det_model)):
        if section in sections:
            _task_section(section, table, model, args, cfg, dump, log, rep, settings)
    if "rebuild" in sections:
        from . import rebuild

        print("running the rebuild section ...", file=sys.stderr, flush=True)
        dev = devices(args.device)[0]
        r = rebuild.run("quick" if args.quick else "full", args.rebuild_manifest, dev, args.threads)
        dump["rebuild"] = r
        print(rebuild_table(rep, r, judge=not args.quick), flush=True)
    if "cluster" in sections:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            print('local vs Ray: skipped (pip install "galleryvis[ray]")', flush=True)
        else:
            from . import cluster

            print("running the local-vs-Ray section ...", file=sys.stderr, flush=True)
            chosen = args.cluster_manifest or (None if args.quick else "default")
            r = cluster.run("quick" if args.quick else "full", chosen, args.images, args.batch_size)
            dump["cluster"] = r
            print(cluster_table(rep, r), flush=True)
    if "default" in sections:
        from . import first

        print("running the default gallery section ...", file=sys.stderr, flush=True)
        r = first.run(args.floor_passes or (200 if args.quick else first.PASSES), args.threads, args.keep_site)
        dump["default"] = r
        print(first_table(rep, r, judge=not args.quick), flush=True)
    if "quantus" in sections:
        from . import quantus

        print("running the quantus section ...", file=sys.stderr, flush=True)
        r = quantus.run(models[0], args.quick, args.seed, args.batch_size, cfg["repeats"], cfg["budget"],
                        threads=args.threads)
        dump["quantus"] = r
        print(quantus.table(rep, r), flush=True)
    block = checks_block(rep)
    if block:
        print(block)
    load = _load()
    print(f"\n(bench took {time.perf_counter() - t_start:.0f} s"
          + (f"; load average {load:.1f} at the end)" if load is not None else ")"))
    for entry in log:
        print(f"\n{entry}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(dump, indent=1))


def _run_model(spec: dict[str, Any], isolate: bool, log: list[str]) -> list[dict[str, Any]]:
    if not isolate:
        return run_worker(spec, log)
    from .cases import CASES

    records = run_worker({**spec, "cases": [], "extras": spec["extras"]}, log)
    for case in spec["cases"]:
        for impl in CASES[case].impls:
            one = run_worker({**spec, "cases": [case], "impls": [impl.key], "extras": [], "references": False}, log)
            records += [r for r in one if r["type"] != "info" or not any(x["type"] == "info" for x in records)]
    return records


if __name__ == "__main__":
    main()

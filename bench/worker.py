"""One benchmark process: one model on one device, the requested cases, results as JSON lines.

``python -m bench.worker SPEC_JSON``; run by ``python -m bench`` (a fresh process per model, or
per measurement with ``--isolate``), so that measurements never share a process with another
model and resident memory starts clean.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import math
import statistics
import sys
import traceback
import warnings
from typing import Any, Callable

import torch

from galleryvis.hooks import capture, resolve_layer

from .cases import CASES, PER_CHANNEL, Bench, input_gradient
from .common import (PeakMemory, Skip, build_model, calibrate, detection_targets, frozen, load_inputs, measure,
                     segment_targets, timed, use_clock)

#: Photos a segmentation model's batch-norm statistics are taken from (the four bundled ones).
CALIBRATION_IMAGES = 4


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _result(case: str, impl: str, label: str, kind: str, fn: Callable[[], object], spec: dict[str, Any],
            n_images: int, device: torch.device, **extra: Any) -> dict[str, Any]:
    m = measure(fn, device, spec["repeats"], spec["budget"])
    return {"type": "result", "case": case, "impl": impl, "label": label, "kind": kind,
            "seconds": m.median, "per_image": m.median / n_images, "times": m.times,
            "peak_mb": m.peak_mb, "cold_only": m.cold_only, **extra}


def run(spec: dict[str, Any]) -> None:
    device = torch.device(spec["device"])
    use_clock(spec.get("clock", "wall"))
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    import galleryvis
    from galleryvis import tasks
    from galleryvis.engine.layers import default_layer, fixed_input_size, grids_of, probe

    _preload()
    model = build_model(spec["model"], spec["seed"], device, spec["size"])
    task = tasks.of_model(model)
    fixed = fixed_input_size(model)  # a ViT takes one size: --quick's 112 px would not run
    if fixed is not None and fixed[0] != fixed[1]:
        raise ValueError(f"{spec['model']} takes only {fixed[0]}x{fixed[1]} inputs; the bench's photos are square")
    size = spec["size"] if fixed is None else fixed[0]
    x = load_inputs(spec["images"], size, device, raw=task == "detection")
    masks = boxes = None
    if task == "segmentation":
        calibrate(model, load_inputs(CALIBRATION_IMAGES, size, device))
        targets, masks = segment_targets(model, x)
    elif task == "detection":
        targets, boxes = detection_targets(model, x)
    else:
        with torch.no_grad():
            targets = model(x).argmax(1).tolist()
    layer = spec.get("layer") or default_layer(model, x[:1])
    bs = spec["batch_size"]
    grid = grids_of(model, probe(model, x[:1]), 1)[layer]
    if isinstance(grid, Exception):
        raise grid
    # grad-cam's documented reshape transform where the layer is not (N, C, H, W): a ViT's tokens
    reshape = None if grid.layout == "channels_first" else grid.nchw
    settings = {**spec["settings"], "reshape": reshape}
    if task == "detection":  # D-RISE's masks, one tensor for every implementation
        from galleryvis.attribution.perturbation import rise_masks

        settings["drise_mask_tensor"] = rise_masks("drise", settings["drise_masks"], settings["drise_cells"], 0.5,
                                                   spec["seed"], tuple(x.shape[-2:]))(slice(None)).to(device)
    bench = Bench(model, x, targets, layer, bs, settings, masks, boxes)
    n = x.shape[0]

    def fwdbwd(xs: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """The plain pass on ``xs``, whose rows are those images' copies (their targets, regions)."""
        return input_gradient(model, xs, [targets[i] for i in rows], None if masks is None else masks[rows],
                              None if boxes is None else boxes[rows])

    # warm-up: allocator and kernels at batch 1 and at the chunk size
    xb = x[:1].expand(bs, -1, -1, -1).contiguous()
    timed(lambda: fwdbwd(xb, [0] * bs), device)
    for _ in range(2):
        timed(lambda: fwdbwd(x[:1], [0]), device)
        with torch.inference_mode():
            timed(lambda: model(xb), device)

    if spec.get("references", True):
        refs = {}
        with torch.inference_mode():
            refs["forward_b1"] = _result("reference", "forward_b1", "forward, batch 1", "reference",
                                         lambda: model(x[:1]), spec, 1, device)
            refs["forward_bs"] = _result("reference", "forward_bs", f"forward, batch {bs}", "reference",
                                         lambda: model(xb), spec, bs, device)
        refs["fwdbwd_b1"] = _result("reference", "fwdbwd_b1", "forward + input-gradient backward, batch 1",
                                    "reference", lambda: fwdbwd(x[:1], [0]), spec, 1, device)
        refs["fwdbwd_bs"] = _result("reference", "fwdbwd_bs", f"forward + input-gradient backward, batch {bs}",
                                    "reference", lambda: fwdbwd(xb, [0] * bs), spec, bs, device)
        for r in refs.values():
            emit(r)
    emit({"type": "info", "model": spec["model"], "device": str(device), "size": size, "layer": layer, "targets": targets,
          "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "threads": torch.get_num_threads(),
          "galleryvis": getattr(galleryvis, "__version__", "?"), "task": task,
          **({} if masks is None else {"regions": masks.float().mean((1, 2)).tolist()}),
          **({} if boxes is None else {"boxes": boxes.tolist()})})

    for case_key in spec["cases"]:
        case = CASES[case_key]
        why = case.applies(bench)
        if why:
            emit({"type": "skip_case", "case": case_key, "reason": why})
            continue
        extra: dict[str, Any] = {}
        if case_key in PER_CHANNEL:
            extra = _channels(bench)
            emit({"type": "case_info", "case": case_key, **extra})
        ready: list[tuple[dict[str, Any], Callable[[], object]]] = []
        for impl in case.impls:
            if spec.get("impls") and impl.key not in spec["impls"]:
                continue
            base = {"type": "result", "case": case_key, "impl": impl.key, "label": impl.label, "kind": impl.kind}
            if case_key == "scorecam" and impl.kind == "seed" and not spec.get("seed_scorecam"):
                emit({**base, "skipped": "one unbatched forward per channel: add --seed-scorecam to measure it"})
                continue
            try:
                ready.append((base, impl.make(bench)))
            except Skip as exc:
                emit({**base, "skipped": str(exc)})
        for record in _interleaved(ready, spec, n, device, model, case.agreement):
            emit(record)

    for name in spec.get("extras", []):
        try:
            {"metrics": _metrics, "synthesis": _synthesis}[name](bench, spec, device)
        except Skip as exc:
            emit({"type": "extra", "name": name, "skipped": str(exc)})
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            emit({"type": "extra", "name": name, "error": _error(exc)})


def _interleaved(ready: list[tuple[dict[str, Any], Callable[[], object]]], spec: dict[str, Any], n_images: int,
                 device: torch.device, model: torch.nn.Module, agreement: float | None = None) -> list[dict[str, Any]]:
    """One case's implementations timed in interleaved rounds: each one's warm-up call (its peak
    memory), then ``repeats`` rounds in which every implementation runs once, starting one
    further along each round, so that a slow phase of a shared machine falls on all of them. A
    call slower than ``budget`` is not repeated; one slower than ``budget / k`` joins ``k``
    rounds. A failing implementation is a row with its error, not a crash. With ``agreement``
    (the case's), each warm-up call's maps are kept and every row gets ``agreement``: the lowest
    Pearson r over the images against the first galleryvis row's maps."""
    records: dict[int, dict[str, Any]] = {}
    times: dict[int, list[float]] = {}
    rounds: dict[int, int] = {}
    maps: dict[int, Any] = {}
    for i, (base, fn) in enumerate(ready):
        mem = PeakMemory(device)
        mem.start()
        try:
            first = timed(fn if agreement is None else lambda i=i, fn=fn: maps.__setitem__(i, fn()), device)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            records[i] = {**base, "error": _error(exc)}
            continue
        finally:
            model.zero_grad(set_to_none=True)  # seed-style and grad-cam leave weight gradients
        records[i] = {**base, "peak_mb": mem.stop(), "first": first}
        times[i] = []
        rounds[i] = spec["repeats"] if first <= 0 else min(spec["repeats"], int(spec["budget"] // first))
    ours = next((i for i in maps if ready[i][0]["kind"] == "galleryvis"), None)
    if ours is not None:
        for i, m in maps.items():
            if i != ours:
                records[i]["agreement"] = _lowest_r(m, maps[ours])
    maps.clear()
    live = list(times)
    for r in range(spec["repeats"]):
        start = r % len(live) if live else 0
        for i in live[start:] + live[:start]:
            if r >= rounds[i] or "error" in records[i]:
                continue
            try:
                times[i].append(timed(ready[i][1], device))
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc(file=sys.stderr)
                records[i] = {**ready[i][0], "error": _error(exc)}
            finally:
                model.zero_grad(set_to_none=True)
    out = []
    for i in range(len(ready)):
        rec = records[i]
        if "error" not in rec:
            first = rec.pop("first")
            ts = times[i] or [first]
            median = statistics.median(ts)
            rec.update(seconds=median, per_image=median / n_images, times=ts, cold_only=not times[i],
                       spread=(max(ts) - min(ts)) / median if len(ts) > 1 and median > 0 else None)
        out.append(rec)
    return out


def _lowest_r(a: Any, b: Any) -> float:
    """The lowest Pearson r over the images of two implementations' maps (N first; a map of one
    channel against one of three compares the flattened values as they are), NaN where their
    sizes differ or a map is constant."""
    from galleryvis.metrics.evaluation import _pearson

    a, b = (torch.as_tensor(m).detach().double().cpu() for m in (a, b))
    if a.shape[0] != b.shape[0] or a[0].numel() != b[0].numel():
        return float("nan")
    rs = [_pearson(u.flatten().numpy(), v.flatten().numpy()) for u, v in zip(a, b)]
    return float("nan") if any(math.isnan(r) for r in rs) else min(rs)


def _preload() -> None:
    """Import every package a measurement may use now, so no import lands in a peak-memory window."""
    for name in ("captum.attr", "pytorch_grad_cam", "galleryvis.metrics", "galleryvis.synthesis"):
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            try:
                importlib.import_module(name)
            except ImportError:
                pass


def _channels(b: Bench) -> dict[str, Any]:
    """Channel count of the CAM layer and how many are not constant (per image), on its grid."""
    with torch.inference_mode(), capture(b.model, [b.layer]) as acts:
        b.model(b.x)
    a = acts[b.layer] if b.settings["reshape"] is None else b.settings["reshape"](acts[b.layer])
    live = (a.amax((2, 3)) > a.amin((2, 3))).sum(1).tolist()
    return {"channels": int(a.shape[1]), "live_channels": [int(v) for v in live]}


def _metrics(b: Bench, spec: dict[str, Any], device: torch.device) -> None:
    """Cost of scoring one map with deletion + insertion, relative to one forward pass."""
    if importlib.util.find_spec("galleryvis.metrics") is None:
        raise Skip("galleryvis.metrics does not exist yet")
    import galleryvis
    from galleryvis import metrics

    fn = getattr(metrics, "deletion_insertion", None)
    if fn is None:
        raise Skip("galleryvis.metrics has no deletion_insertion")
    x, t = b.x[:1], b.targets[:1]
    maps = galleryvis.attribute(b.model, x, "gradcam", t, b.layer)
    params = inspect.signature(fn).parameters
    r = _result("metrics", "deletion_insertion", "deletion + insertion of one Grad-CAM map", "galleryvis",
                lambda: fn(b.model, x, maps, t), spec, 1, device)
    emit({**r, "type": "extra", "name": "metrics",
          **{k: _default(params, k) for k in ("steps", "substrate", "score")}})


def _default(params: Any, name: str) -> Any:
    p = params.get(name)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def _synthesis(b: Bench, spec: dict[str, Any], device: torch.device) -> None:
    """Per-step cost of filter visualization, from two step counts (setup cost cancels)."""
    import galleryvis
    from galleryvis.engine.layers import fixed_input_size
    from galleryvis.synthesis.api import fit

    synthesize = getattr(galleryvis, "synthesize", None)
    if synthesize is None:
        from galleryvis import synthesis

        synthesize = getattr(synthesis, "synthesize", None)
    if synthesize is None:
        raise Skip("galleryvis.synthesize does not exist yet")
    steps = spec["settings"]["syn_steps"]
    holder: dict[str, Any] = {}

    def go(k: int) -> Callable[[], object]:
        def call() -> object:
            holder["r"] = synthesize(b.model, "filter_visualization", layer=b.layer, channel=0, steps=k, seed=0)
            return None
        return call

    few = _result("synthesis", "steps_k", f"filter_visualization, {steps} steps", "galleryvis", go(steps), spec, 1, device)
    many = _result("synthesis", "steps_2k", f"filter_visualization, {2 * steps} steps", "galleryvis",
                   go(2 * steps), spec, 1, device)
    result = holder["r"]
    image = result.image if hasattr(result, "image") else result[0]
    shape = tuple(image.shape)
    layer_module = resolve_layer(b.model, b.layer)
    xr = torch.randn(shape, device=device)
    size = fixed_input_size(b.model)  # resized to it before the model, as synthesize does

    def fwd_bwd() -> object:
        saved: dict[str, torch.Tensor] = {}
        h = layer_module.register_forward_hook(lambda _m, _i, o: saved.__setitem__("a", o))
        try:
            xg = xr.detach().requires_grad_(True)
            with frozen(b.model), torch.enable_grad():
                b.model(fit(xg, size))
                (g,) = torch.autograd.grad(saved["a"][:, 0].mean(), xg)
            return g
        finally:
            h.remove()

    ref = _result("synthesis", "fwdbwd", f"forward + backward of the same batch {shape}", "reference",
                  fwd_bwd, spec, 1, device)
    diff = (many["seconds"] - few["seconds"]) / steps
    emit({"type": "extra", "name": "synthesis", "steps": steps, "shape": list(shape),
          "seconds_k": few["seconds"], "seconds_2k": many["seconds"],
          "per_step": diff if diff > 0 else None,  # None: too noisy to separate from the setup
          "per_step_upper": many["seconds"] / (2 * steps),  # setup included
          "fwdbwd": ref["seconds"], "peak_mb": many["peak_mb"]})


def main() -> None:
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
    spec = json.loads(sys.argv[1])
    try:
        run(spec)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        emit({"type": "fatal", "error": _error(exc)})
        sys.exit(1)


if __name__ == "__main__":
    main()

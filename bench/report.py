"""Turning worker results into tables (aligned text or GitHub Markdown) and target checks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .cases import CASES, DETECT_ORDER, ORDER, PER_CHANNEL, SEGMENT_ORDER
from .common import SEGMENTATION_CLASSES as CLASSES


@dataclass
class Check:
    what: str
    ok: bool


@dataclass
class Report:
    """Rendering settings plus every target check collected while printing."""

    markdown: bool = False
    checks: list[Check] = field(default_factory=list)

    def table(self, headers: list[str], rows: list[list[str]]) -> str:
        if self.markdown:
            out = ["| " + " | ".join(headers) + " |",
                   "|" + "|".join("---:" if _numeric(h) else "---" for h in headers) + "|"]
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
            return "\n".join(out)
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
        fmt = lambda r: "  ".join(c.rjust(w) if _numeric(h) else c.ljust(w)  # noqa: E731
                                   for c, w, h in zip(r, widths, headers)).rstrip()
        return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *map(fmt, rows)])

    def heading(self, text: str, level: int = 3) -> str:
        return f"{'#' * level} {text}" if self.markdown else f"\n== {text} =="

    def join(self, lines: list[str]) -> str:
        """Lines as text; in Markdown each plain line is its own paragraph (tables and lists stay whole)."""
        if not self.markdown:
            return "\n".join(lines)
        out: list[str] = []
        for line in "\n".join(lines).split("\n"):
            grouped = line.startswith(("|", "- "))
            if not line.strip():
                continue
            if out and not (grouped and out[-1].startswith(("|", "- ")) and out[-1][:1] == line[:1]):
                out.append("")
            out.append(line)
        return "\n".join(out) + "\n"

    def check(self, what: str, ok: bool) -> str:
        self.checks.append(Check(what, ok))
        return "✓" if ok else "✗"


_NUMERIC = {"s/image", "peak MB", "speedup", "runs", "seconds", "seconds (wall)", "seconds (in build.json)", "ratio"}


def _numeric(header: str) -> bool:
    return header in _NUMERIC


def secs(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def mb(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def times(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def model_table(rep: Report, records: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """One model on one device: every case's rows, references, and the targets of issue 3."""
    info = next((r for r in records if r["type"] == "info"), {})
    refs = {r["impl"]: r for r in records if r["type"] == "result" and r["case"] == "reference"}
    results: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["type"] == "result" and r["case"] != "reference":
            results.setdefault(r["case"], []).append(r)
    case_info = {r["case"]: r for r in records if r["type"] == "case_info"}
    skipped = {r["case"]: r["reason"] for r in records if r["type"] == "skip_case"}
    model, device = info.get("model", "?"), info.get("device", "?")
    settings = {**settings, "size": info.get("size", settings["size"])}  # the model's own where it takes one

    lines = [rep.heading(
        f"{model} · {device} · {info.get('threads', '?')} threads · {settings['size']}×{settings['size']} · "
        f"{settings['images']} image(s) · batch_size {settings['batch_size']}")]
    if info and "regions" in info:
        regions = ", ".join(f"{c} ({100 * r:.0f} %)" for c, r in zip(info["targets"], info["regions"]))
        lines.append(f"{info['params_m']:.1f} M parameters (weights=None, {CLASSES} classes, seed {settings['seed']}, "
                     f"batch-norm statistics of the bundled photos), CAM layer `{info['layer']}`, targets: each "
                     f"image's top-1 segment, its class and the share of pixels the model gives it: {regions}")
    elif info and "boxes" in info:
        best = ", ".join(f"{c} [{', '.join(f'{v:.0f}' for v in b)}]" for c, b in zip(info["targets"], info["boxes"]))
        lines.append(f"{info['params_m']:.1f} M parameters (weights=None, no backbone weights, box_score_thresh 0, "
                     f"seed {settings['seed']}), CAM layer `{info['layer']}`, targets: each image's best detection, "
                     f"its label and box: {best}")
    elif info:
        lines.append(f"{info['params_m']:.1f} M parameters (weights=None, seed {settings['seed']}), "
                     f"CAM layer `{info['layer']}`, targets {info['targets']} (top-1)")
    if refs:
        lines.append("reference: forward " + ", ".join(
            f"{secs(refs[k]['per_image'])} s/image ({refs[k]['label'].split(', ')[1]})"
            for k in ("forward_b1", "forward_bs") if k in refs)
            + ("; forward + input-gradient backward (frozen parameters) " + ", ".join(
                f"{secs(refs[k]['per_image'])} s/image ({refs[k]['label'].split(', ')[1]})"
                for k in ("fwdbwd_b1", "fwdbwd_bs") if k in refs) if "fwdbwd_b1" in refs else ""))
    lines.append("")

    headers = ["technique", "implementation", "s/image", "peak MB", "speedup", "runs", "target"]
    rows: list[list[str]] = []
    agreements: list[str] = []
    for key in ORDER + SEGMENT_ORDER + DETECT_ORDER:
        if key in skipped:
            continue
        rs = results.get(key)
        if not rs:
            continue
        case = CASES[key]
        label = case.label(settings)
        ours = min((r for r in rs if r["kind"] == "galleryvis" and "per_image" in r), key=lambda r: r["per_image"],
                   default=None)  # galleryvis at its best batch setting
        peer_rows = [r for r in rs if r["kind"] == "peer" and "per_image" in r]
        fastest_peer = min(peer_rows, key=lambda r: r["per_image"], default=None)
        first = True
        for r in rs:
            tech = label if first else ""
            first = False
            if "per_image" not in r:
                why = r.get("skipped") or r.get("error", "")
                rows.append([tech, r["label"], "—", "—", "—", "—", ("skipped: " if "skipped" in r else "error: ") + why])
                continue
            speed = r["per_image"] / ours["per_image"] if ours and r is not ours else None
            target = ""
            if speed is not None and r["kind"] == "seed" and case.gradient:
                target = f"≥ 2.5× {rep.check(f'{model}/{device} {key}: ≥ 2.5× the seed-style loop ({speed:.2f}×)', speed >= 2.5)}"
            elif speed is not None and r is fastest_peer:
                t = case.peer_target
                target = f"≥ {t:g}× {rep.check(f'{model}/{device} {key}: ≥ {t:g}× the fastest peer ({speed:.2f}×)', speed >= t)}"
            runs = f"{len(r['times'])}" + ("*" if r.get("cold_only") else "") \
                + (f" ±{50 * r['spread']:.0f} %" if r.get("spread") is not None else "")
            rows.append([tech, r["label"], secs(r["per_image"]), mb(r.get("peak_mb")),
                         "—" if r is ours else times(speed), runs, target])
            if case.agreement is not None and "agreement" in r:
                agreements.append(_agreement(rep, f"{model}/{device} {key}", r, case.agreement))
        floor = case.floor(settings) if case.floor else None
        if floor and floor[1] in refs and ours:
            rows.append(_floor_row(floor, refs, ours, rs, settings))
        if key in PER_CHANNEL and "forward_bs" in refs and key in case_info:
            c = case_info[key]["channels"]
            live = f", live {'/'.join(map(str, case_info[key]['live_channels']))}" if key == "scorecam" else ""
            ref_t = c * refs["forward_bs"]["per_image"]
            row = ["", f"reference: C × forward at batch {settings['batch_size']} (C = {c}{live})",
                   secs(ref_t), "—", "—", "", ""]
            if ours:
                ratio = ours["per_image"] / ref_t
                row[4] = times(ref_t / ours["per_image"])
                row[6] = f"≤ 1.1× {rep.check(f'{model}/{device} {key}: {ratio:.2f}× of C × batched forward (≤ 1.1×)', ratio <= 1.1)}"
            rows.append(row)
    lines.append(rep.table(headers, rows))
    if agreements:
        lines.append("maps against galleryvis's, before timing (the lowest Pearson r over the images):")
        lines += agreements
    for key, why in skipped.items():
        lines.append(f"{CASES[key].label(settings)}: not run on {model} ({why})")
    return rep.join(lines)


def _agreement(rep: Report, what: str, r: dict[str, Any], r_min: float) -> str:
    """One implementation's agreement with galleryvis's maps as a list item with its check."""
    value = r["agreement"]
    ok = value is not None and not math.isnan(value) and value >= r_min
    shown = "—" if value is None or math.isnan(value) else f"{value:.4f}"
    mark = rep.check(f"{what}: {r['label']} computes galleryvis's maps (r = {shown} ≥ {r_min:g})", ok)
    return f"- {r['label']}: r = {shown} (≥ {r_min:g} {mark})"


def _floor_row(floor: tuple[int, str] | tuple[int, str, int], refs: dict[str, Any], ours: dict[str, Any],
               rs: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """The cost of the passes themselves in plain PyTorch (frozen parameters, same batch): what
    any implementation computing these gradients pays; the seed-style loop's and the fastest
    peer's time over it are the largest speedups such an implementation gets (galleryvis's own
    gains beyond it: channels_last weights and inputs, batch-norm folding)."""
    passes, ref_key, *more = floor
    single = more[0] if more else 0  # passes of the same kind at batch 1 besides
    kind = ref_key.rsplit("_", 1)[0]
    t = passes * refs[ref_key]["per_image"] + single * refs[f"{kind}_b1"]["per_image"]
    batch = 1 if ref_key.endswith("_b1") else settings["batch_size"]
    pass_ = "forward" if ref_key.startswith("forward_") else "forward + input-gradient backward"
    what = (pass_ if passes == 1 else f"{passes} × ({pass_})") + f" at batch {batch}" \
        + (f" + {single} at batch 1" if single else "")
    seed = next((r for r in rs if r["kind"] == "seed" and "per_image" in r), None)
    peer = min((r["per_image"] for r in rs if r["kind"] == "peer" and "per_image" in r), default=None)
    note = "; ".join(([f"seed-style ÷ this = {times(seed['per_image'] / t)}"] if seed else [])
                     + ([f"fastest peer ÷ this = {times(peer / t)}"] if peer else []))
    return ["", f"reference: {what}, plain PyTorch, frozen parameters", secs(t), "—",
            times(t / ours["per_image"]), "", note]


def extras_table(rep: Report, records: list[dict[str, Any]], refs: dict[str, dict[str, Any]], model: str,
                 device: str) -> str:
    """Metrics and synthesis costs relative to forward / forward+backward passes."""
    rows = []
    for r in records:
        if r["type"] != "extra":
            continue
        name = r["name"]
        if "skipped" in r or "error" in r:
            rows.append([name, "—", "—", ("skipped: " + r["skipped"]) if "skipped" in r else "error: " + r["error"]])
            continue
        if name == "metrics":
            fwd = refs.get("forward_b1", {}).get("per_image")
            ratio = r["seconds"] / fwd if fwd else None
            steps = ", ".join(f"{k} {r[k]}" for k in ("steps", "substrate", "score") if r.get(k) is not None) or "defaults"
            fwd_bs = refs.get("forward_bs", {}).get("per_image")
            equiv = f"; = {r['seconds'] / fwd_bs:.0f} batched forwards" if fwd_bs else ""
            rows.append([f"deletion + insertion, one map ({steps})", secs(r["seconds"]),
                         times(ratio), f"× one forward (batch 1){equiv}; no target"])
        elif name == "synthesis":
            per_step = r["per_step"] if r["per_step"] is not None else r["per_step_upper"]
            how = "" if r["per_step"] is not None else " (upper bound: setup included; the two-length difference was lost in noise)"
            ratio = per_step / r["fwdbwd"] if r["fwdbwd"] else None
            mark = rep.check(f"{model}/{device} synthesis: per step {times(ratio)} of forward+backward (≤ 1.3×)",
                             ratio is not None and ratio <= 1.3)
            rows.append([f"filter_visualization, per step (batch {r['shape'][0]}, {r['shape'][2]}×{r['shape'][3]}){how}",
                         secs(per_step), times(ratio),
                         f"× one forward+backward of that batch ({secs(r['fwdbwd'])} s); ≤ 1.3× {mark}"])
    if not rows:
        return ""
    return rep.join([rep.heading(f"metrics and synthesis · {model} · {device}"), "",
                     rep.table(["what", "seconds", "ratio", "relative to / target"], rows)])


def rebuild_table(rep: Report, r: dict[str, Any], judge: bool = True) -> str:
    """Cold vs unchanged rebuild, and cold with vs without shared passes; ``judge=False`` (quick
    mode) prints the ratios without a check."""
    cold, warm, unshared = r["cold"], r["warm"], r["unshared"]
    rows = [["cold build (empty cache)", secs(cold["wall"]), secs(cold.get("build_seconds")), _summary(cold)],
            ["unchanged rebuild", secs(warm["wall"]), secs(warm.get("build_seconds")), _summary(warm)],
            ["cold build, --no-shared-passes", secs(unshared["wall"]), secs(unshared.get("build_seconds")),
             _summary(unshared)],
            ["python start-up + import galleryvis", secs(r["startup"]), "—", "the floor of any build"]]
    lines = [rep.heading("incremental rebuild"), "", f"gallery: {r['what']}", "",
             rep.table(["build", "seconds (wall)", "seconds (in build.json)", "cells"], rows)]
    if cold["rc"] or warm["rc"]:
        lines.append(f"build failed (exit {cold['rc']}/{warm['rc']}): {cold['stderr'] or warm['stderr']}")
    elif cold["wall"] > 0:
        ratio = warm["wall"] / cold["wall"]
        mark = rep.check(f"rebuild: {ratio:.1%} of the cold build, wall (≤ 5%)", ratio <= 0.05) if judge \
            else None
        inner = ""
        if cold.get("build_seconds") and warm.get("build_seconds") is not None:
            inner = f"; {warm['build_seconds'] / cold['build_seconds']:.1%} counting the build itself (build.json)"
        verdict = f"{mark} (target ≤ 5%)" if mark else "(not judged in quick mode: a gallery this small is all fixed cost)"
        lines.append(f"\nrebuild / cold = {ratio:.1%} wall clock {verdict}{inner}")
    if not unshared["rc"] and cold["wall"] > 0:
        saving = unshared["wall"] / cold["wall"]
        mark = rep.check(f"shared passes: the cold build {saving:.2f}× cheaper than without (≥ 2×)", saving >= 2) \
            if judge else "(not judged in quick mode)"
        lines.append(f"without shared passes / with = {saving:.2f}× wall clock {mark}")
        from galleryvis.build.progress import STAGES

        shared_s, unshared_s = (b.get("stages", {}).get("seconds", {}) for b in (cold, unshared))
        stages = [[name, secs(shared_s.get(name)), secs(unshared_s.get(name))] for name in STAGES if name in shared_s]
        if stages:
            lines += ["", rep.table(["stage", "shared (s)", "not shared (s)"], stages)]
    return rep.join(lines)


def cluster_table(rep: Report, r: dict[str, Any]) -> str:
    """Local vs Ray builds (issue 16): seconds, throughput, and the 1-worker overhead (<= 15 %)."""
    names = {"local": "local executor", "ray1": "Ray, 1 worker (every core)", "ray2": "Ray, 2 workers (half each)"}
    rows = [[label, secs(r[k]["wall"]), secs(r[k].get("build_seconds")), _summary(r[k]), f"{r[k]['cells_per_s']:.2f}"]
            for k, label in names.items()]
    lines = [rep.heading("local vs Ray"), "", f"gallery: {r['what']}; {r['cores']} cores; --batch-size "
             f"{r['batch_size']} (a Ray task: that many images of one model); "
             f"the local Ray cluster started once in {secs(r['ray_start'])} s (not in the builds)", "",
             rep.table(["build", "seconds (wall)", "seconds (in build.json)", "cells", "cells / s (wall)"], rows)]
    failed = [k for k in names if r[k]["rc"]]
    if failed:
        lines.append(f"build failed ({', '.join(failed)}): {r[failed[0]]['stderr']}")
    elif r["overhead"] is not None:
        mark = rep.check(f"Ray on one machine: {r['overhead']:+.1%} against local, wall (≤ +15%)", r["overhead"] <= 0.15)
        lines.append(f"\nRay (1 worker) / local - 1 = {r['overhead']:+.1%} {mark}")
    return rep.join(lines)


def first_table(rep: Report, r: dict[str, Any], judge: bool = True) -> str:
    """The default gallery's cold build against the floor of plain passes (:mod:`bench.first`);
    ``judge=False`` (quick mode: fewer floor passes) prints the ratio without a check."""
    from galleryvis.build.progress import STAGES

    from .first import PASSES

    build = r["build"]
    rows = [["cold build of the default gallery", secs(build["wall"]), secs(build.get("build_seconds")),
             _summary(build)],
            [f"{PASSES:,} passes of the floor", secs(r["floor"]), "—",
             f"{1000 * r['pass']:.1f} ms per pass ({1000 * r['pass_before']:.1f} before the build, "
             f"{1000 * r['pass_after']:.1f} after; {r['passes']:,} timed)"]]
    lines = [rep.heading("the default gallery, cold"), "",
             "floor: EfficientNet-Lite0, 224 px, batch 1, forward + backward to the input, frozen parameters", "",
             rep.table(["what", "seconds (wall)", "seconds (in build.json)", "cells"], rows)]
    if build["rc"]:
        lines.append(f"build failed (exit {build['rc']}): {build['stderr']}")
        return rep.join(lines)
    stages = build.get("stages", {})
    seconds = stages.get("seconds", {})
    if seconds:
        lines += ["", rep.table(["stage", "seconds"], [[name, secs(seconds[name])] for name in STAGES
                                                       if name in seconds])]
        lines.append(f"model passes in the build: {stages.get('model_passes', '?')} "
                     f"({stages.get('images_through_models', '?')} images)")
    transfer = build.get("transfer", [])
    if transfer:
        lines += ["", "class visualizations: the target's rank under the gallery's other models (1 = top)", "",
                  rep.table(["made with", "row", "class", "rank"],
                            [[t["model"], t["row"] + (f" ({t['image']})" if t["image"] else ""), t["target"],
                              ", ".join(f"{v} under {k}" for k, v in t["ranks"].items())] for t in transfer])]
    verdict = (rep.check(f"default gallery: cold build = {r['ratio']:,.0f} passes of the floor (≤ {PASSES:,})",
                         r["ratio"] <= PASSES) if judge else "(not judged in quick mode)")
    lines.append(f"\ncold build / one pass of the floor = {r['ratio']:,.0f} passes {verdict} "
                 f"(target ≤ {PASSES:,}: {secs(r['floor'])} s in this run)")
    lines.append(f"by CPU time (all threads; steadier on a shared machine): {r['ratio_cpu']:,.0f} passes "
                 f"({secs(r['build']['cpu'])} s against {1000 * r['pass_cpu']:.1f} ms per pass)")
    return rep.join(lines)


def _summary(b: dict[str, Any]) -> str:
    s = b.get("summary")
    if not s:
        return "—"
    return f"{s.get('computed', '?')} computed, {s.get('cached', '?')} cached, {s.get('failed', '?')} failed"


def checks_block(rep: Report) -> str:
    if not rep.checks:
        return ""
    ok = sum(c.ok for c in rep.checks)
    lines = [rep.heading("targets (issues 3, 5, 6, 16, 30, 35)"), "", f"{ok} of {len(rep.checks)} met:"]
    lines += [f"- {'✓' if c.ok else '✗'} {c.what}" for c in rep.checks]
    return rep.join(lines)

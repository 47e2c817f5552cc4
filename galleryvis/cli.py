"""The ``galleryvis`` command: parses flags and calls the pipeline; errors are one line, exit 2."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import click

from galleryvis import __version__
from galleryvis.storage.cache import CACHE_DIRNAME
from galleryvis.render.embed import DEFAULT_SECTION
from galleryvis.errors import ManifestError
from galleryvis.storage.fileio import url_problem

if TYPE_CHECKING:
    import torch

    from galleryvis.config.manifest import Manifest
    from galleryvis.build.pipeline import Summary

MANIFEST_NAME = "galleryvis.toml"


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


class _LocalPath(click.Path):
    """A ``click.Path`` that refuses a URL in one line, exit 2, before anything is created
    (a ``Path`` would make ``s3://bucket/x`` a folder named ``s3:``)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        problem = url_problem(str(value))
        if problem:
            _fail(f"error: {max(param.opts, key=len) if param is not None else 'path'}: {problem}")
        return super().convert(value, param, ctx)


class _CacheLocation(click.Path):
    """A cache folder, or an fsspec URL kept as text (``s3://bucket/prefix``); a URL whose
    filesystem is unknown or not installed is one line, exit 2, before anything is created."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from galleryvis.storage.fileio import url_scheme

        text = str(value)
        if not url_scheme(text) or url_scheme(text) == "file":
            return super().convert(text.removeprefix("file://"), param, ctx)
        from galleryvis.storage.cache import location_problem

        problem = location_problem(text)
        if problem:
            _fail(f"error: {max(param.opts, key=len) if param is not None else 'cache'}: {problem}")
        return text


#: ``--cache-dir``'s type in every command.
_CACHE_FOLDER = _CacheLocation(path_type=Path, file_okay=False)


def _errors_as_exit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the package's own error types into a message and exit code 2, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from galleryvis.errors import EmbedError, ExecutorError, ImageError, LayerError, ModelError
        from galleryvis.registry import TechniqueError
        from galleryvis.storage.sitefiles import LockError

        try:
            return fn(*args, **kwargs)
        except ManifestError as exc:
            _fail("\n".join(f"error: {e}" for e in exc.errors))
        except (ModelError, ImageError, LayerError, TechniqueError, LockError, EmbedError, ExecutorError) as exc:
            _fail(f"error: {exc}")
        except KeyboardInterrupt:
            _fail("interrupted; the previous site is untouched and the cache keeps what was computed", 130)

    return wrapper


def _manifest_path(path: Path | None) -> Path | None:
    """The manifest a command reads: ``path`` (a folder's galleryvis.toml), else ./galleryvis.toml,
    else None (the default)."""
    if path is not None:
        return path / MANIFEST_NAME if path.is_dir() else path
    local = Path.cwd() / MANIFEST_NAME
    return local if local.is_file() else None


def _manifest(path: Path | None) -> Manifest:
    from galleryvis.config.manifest import default_manifest, load_manifest

    chosen = _manifest_path(path)
    if chosen is None:
        return default_manifest()
    if not chosen.is_file():
        raise ManifestError([f"{chosen}: no such manifest file"])
    return load_manifest(chosen)


def _unchanged(manifest: Path | None, cache_dir: Path | str | None, batch_size: int | None,
               quiet: bool) -> Path | None:
    """The site folder when the last build's stamp says nothing it read has changed (then no torch
    is imported, and its summary line is repeated unless ``quiet``), else None (always for a
    cache at a URL, which keeps no stamp)."""
    from galleryvis.storage import stamp

    if isinstance(cache_dir, str):
        return None
    path = _manifest_path(manifest)
    root = cache_dir or (path.parent if path is not None else Path.cwd()) / CACHE_DIRNAME
    record = stamp.fresh(stamp.path_for(root, path), manifest=path, options=stamp.options(root, batch_size))
    if record is None:
        return None
    if not quiet:
        click.echo(f"{record['output']}: {record['summary']} (unchanged since the last build)")
    return Path(record["output"])


def _device(device: str) -> torch.device:
    """``--device`` as a torch device; an unknown or absent one is one line naming the flag,
    before anything loads."""
    from galleryvis.sources.loading import ModelError, choose_device

    try:
        return choose_device(device)
    except ModelError as exc:
        _fail(f"error: --device: {exc}")


def _on_device(manifest: Manifest, device: str | None) -> Manifest:
    """``manifest`` with its models on ``device`` (``--device``), or as it is when None."""
    import dataclasses

    if device is None:
        return manifest
    _device(device)
    return dataclasses.replace(manifest, gallery=dataclasses.replace(manifest.gallery, device=device))


def _open(site: Path) -> None:
    """Open the site's landing page in the default browser (``--open``)."""
    import webbrowser

    webbrowser.open((site / "index.html").resolve().as_uri())


#: ``--device`` of every command that loads models.
_DEVICE = click.option("--device", default=None, metavar="auto|cpu|cuda|mps",
                       help="Where the models run: auto (CUDA, else MPS, else CPU), cpu, cuda or mps; "
                            "instead of a manifest's [gallery] device.")


def _report(output: Path, summary: Summary, quiet: bool) -> None:
    """A build's summary line (unless ``quiet``) and its failures (on stderr)."""
    if not quiet:
        click.echo(f"{output}: {summary.line()}")
    for line in summary.failures:
        click.echo(f"failed: {line}", err=True)


@click.group()
@click.version_option(__version__, prog_name="galleryvis")
def main() -> None:
    """Turn a manifest of images x models x techniques into a static gallery of CNN visualizations."""


@main.command()
@click.argument("manifest", required=False, type=click.Path(path_type=Path))
@click.option("--cache-dir", type=_CACHE_FOLDER,
              help="Cache folder or fsspec URL (s3://bucket/prefix); default: [gallery] cache, else "
                   ".galleryvis-cache beside the manifest.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the cache.")
@click.option("--force", is_flag=True, help="Recompute every cell (and refresh the cache).")
@click.option("--dry-run", is_flag=True, help="Print what would be computed and what comes from the cache.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failing cell (default: keep going).")
@click.option("--keep-going", "fail_fast", flag_value=False, help="Finish every other cell when one fails (default).")
@click.option("--batch-size", default=None, type=click.IntRange(1),
              help="Images (and samples, steps; 4x as many masks) per model call; default: measured per model "
                   "and machine (cached).")
@click.option("--wait", default=0.0, type=float, help="Seconds to wait for another build's lock.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="Compute in this process (local) or on a Ray cluster; default: [gallery] executor, else local.")
@click.option("--ray-address", metavar="ADDR", default=None,
              help="The Ray cluster (default: RAY_ADDRESS, else a local Ray instance).")
@click.option("--num-gpus", type=click.FloatRange(0, 64), default=None,
              help="GPUs per Ray worker, fractions allowed (default: [gallery] num_gpus, else 1 on a GPU).")
@click.option("--ray-workers", type=click.IntRange(1, 1024), default=None,
              help="Ray workers per model (default: [gallery] ray_workers, else 1).")
@click.option("--num-cpus", type=click.IntRange(1, 1024), default=None,
              help="CPUs per Ray worker (default: [gallery] num_cpus, else 1).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--profile", is_flag=True, help="Print seconds per stage, model passes and the costliest cells.")
@click.option("--no-shared-passes", "share_passes", flag_value=False, default=True,
              help="Compute and score every technique in calls of its own (same results; shows what sharing saves).")
@_DEVICE
@click.option("--open", "open_site", is_flag=True, help="Open the landing page in the default browser when done.")
@_errors_as_exit
def build(manifest: Path | None, cache_dir: Path | str | None, no_cache: bool, force: bool, dry_run: bool,
          fail_fast: bool, batch_size: int | None, wait: float, executor: str | None, ray_address: str | None,
          num_gpus: float | None, ray_workers: int | None, num_cpus: int | None, quiet: bool, profile: bool,
          share_passes: bool, device: str | None, open_site: bool) -> None:
    """Build the gallery of MANIFEST, a file or a folder with a galleryvis.toml (default:
    ./galleryvis.toml, else the embedded default)."""
    if not (force or dry_run or no_cache or profile):
        site = _unchanged(manifest, cache_dir, batch_size, quiet)
        if site is not None:
            if open_site:
                _open(site)
            return
    from galleryvis.build.pipeline import Options, build as run_build

    m = _on_device(_manifest(manifest), device)
    opts = Options(cache_dir=cache_dir, use_cache=not no_cache, force=force, dry_run=dry_run, quiet=quiet,
                   fail_fast=fail_fast, batch_size=batch_size, wait=wait, share_passes=share_passes,
                   executor=executor, ray_address=ray_address, num_gpus=num_gpus, ray_workers=ray_workers,
                   num_cpus=num_cpus)
    summary = run_build(m, opts)
    if dry_run:
        click.echo("\n".join(summary.plan))
        click.echo(_dry_run_totals(summary, m.path is None))
        return
    _report(m.gallery.output, summary, quiet)
    if profile:
        click.echo(summary.profile())
    if open_site:
        _open(m.gallery.output)
    if summary.failed:
        sys.exit(1)


def _dry_run_totals(summary: Summary, embedded: bool) -> str:
    """The last lines of ``build --dry-run``: cells to compute and cached, the model passes
    computing them takes, and whether the manifest is the embedded default."""
    cells = summary.jobs
    cached = sum(1 for j in cells if j.cached)
    lines = [f"total: {len(cells) - cached} cells to compute, {cached} cached; about "
             f"{summary.expected_passes:,} model passes (images through the models) to compute them, "
             "before scoring"]
    if embedded:
        lines.append("manifest: the embedded default gallery (no galleryvis.toml here; "
                     "galleryvis init writes one to edit)")
    return "\n".join(lines)


@main.command()
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False),
              help="The gallery's manifest (default: ./galleryvis.toml, else the embedded default).")
@click.option("--section", default=DEFAULT_SECTION, show_default=True, metavar="NAME",
              help="Fill the lines between <!-- galleryvis:NAME --> and <!-- /galleryvis:NAME -->.")
@click.option("--width", default=None, type=click.IntRange(1), help="Picture width in pixels (default: as in gallery.md).")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), help="Cache folder, as for build.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@_errors_as_exit
def embed(file: Path, manifest: Path | None, section: str, width: int | None, cache_dir: Path | None,
          quiet: bool) -> None:
    """Write the gallery of MANIFEST as Markdown tables into a section of FILE (a README, a model card).

    Builds the gallery first (an unchanged one through its stamp, as build does); the pictures are
    linked relative to FILE. Every other byte of FILE stays as it was, and a second run changes
    nothing. Unbalanced, nested or repeated markers: exit code 2, FILE untouched.
    """
    import json

    from galleryvis.render import embed as embedding
    from galleryvis.render.records import RECORDS_FILE, Gallery
    from galleryvis.render import markdown_tables

    embedding.section(embedding.read(file), section, file)  # bad markers fail before the build
    site, failed = _unchanged(manifest, cache_dir, None, quiet), 0
    if site is not None and (site / RECORDS_FILE).is_file():
        prefix = embedding.site_prefix(file, site)
    else:
        from galleryvis.build.pipeline import Options, build as run_build

        m = _manifest(manifest)
        site = m.gallery.output
        prefix = embedding.site_prefix(file, site)  # before the build replaces that folder
        summary = run_build(m, Options(cache_dir=cache_dir, quiet=quiet))
        _report(site, summary, quiet)
        failed = summary.failed
    gallery = Gallery.from_dict(json.loads((site / RECORDS_FILE).read_text(encoding="utf-8")))
    changed = embedding.embed(file, section, markdown_tables(gallery, prefix, width))
    if not quiet:
        click.echo(f"{file}: section '{section}' {'updated' if changed else 'unchanged'}")
    if failed:
        sys.exit(1)


@main.command()
@click.option("--github-pages", is_flag=True, help="Also write a GitHub Actions workflow that deploys the gallery to Pages.")
@click.option("--from-git", metavar="URL[@REF]",
              help=f"The workflow installs galleryvis from this git repository (tag, branch or commit) "
                   f"instead of galleryvis=={__version__} from PyPI.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@_errors_as_exit
def init(github_pages: bool, from_git: str | None, force: bool) -> None:
    """Write a commented starter manifest (galleryvis.toml) in the current folder."""
    from galleryvis.storage.fileio import atomic_write
    from galleryvis.config.manifest import starter_manifest

    if from_git is not None and not github_pages:
        _fail("error: --from-git chooses what the Pages workflow installs: add --github-pages")
    targets = {Path(MANIFEST_NAME): starter_manifest(github_pages)}
    if github_pages:
        from galleryvis.render.publish import WORKFLOW_PATH, git_requirement, pages_workflow

        try:
            requirement = git_requirement(from_git) if from_git is not None else None
        except ValueError as exc:
            _fail(f"error: --from-git: {exc}")
        targets[Path(WORKFLOW_PATH)] = pages_workflow(requirement)
    for path in targets:
        if path.exists() and not force:
            _fail(f"error: {path} exists; pass --force to overwrite it")
    for path, text in targets.items():
        atomic_write(path, text.encode())
        click.echo(f"wrote {path}")


@main.command()
@click.argument("model")
@click.option("--weights", default="none", show_default=True, help="DEFAULT, a weights enum name, a .pth path, or none.")
@click.option("--size", default=None, type=click.IntRange(8), help="Input size (default: the model's own, else 224).")
@click.option("--device", default="cpu", show_default=True, metavar="auto|cpu|cuda|mps", help="Where the model runs.")
@_errors_as_exit
def layers(model: str, weights: str, size: int | None, device: str) -> None:
    """Print MODEL's named modules with output shapes and the grid CAMs map each to (h x w,
    channels last, tokens with the class/register tokens dropped, or a detector's FPN levels
    resized to the smallest); '*' marks the default CAM layer."""
    import torch

    from galleryvis.engine.layers import Grid, default_layer, probe_grids
    from galleryvis.config.manifest import ModelSpec
    from galleryvis.sources.loading import load_model

    where = _device(device)
    adapter = load_model(ModelSpec(name=model, weights=weights), Path.cwd(), where, model)
    x = torch.zeros(1, 3, size or adapter.size, size or adapter.size, device=where)
    default = default_layer(adapter.model, x)
    records, grids = probe_grids(adapter.model, x)
    shapes = {name: shape for name, shape, _ in records}
    for name, module in adapter.model.named_modules():
        if name:
            shape = "x".join(map(str, shapes[name])) if shapes.get(name) else "-"
            grid = grids.get(name)
            mark = "*" if name == default else " "
            click.echo(f"{mark} {name:40s} {type(module).__name__:24s} {shape:18s} "
                       f"{grid if isinstance(grid, Grid) else '-'}".rstrip())


@main.command("techniques")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON (name, family, parameters, paper, ...).")
def list_techniques(as_json: bool) -> None:
    """List every technique with its parameters and defaults."""
    from galleryvis.engine import techniques

    if as_json:
        import json

        click.echo(json.dumps(techniques(), indent=2, default=repr))
        return
    for t in techniques():
        params = ", ".join(f"{k}={v!r}" for k, v in t["params"].items())
        click.echo(f"{t['name']:24s} [{t['family']}, {t['output']}] {params}")


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON: per source, its models and how to use them.")
def list_models(as_json: bool) -> None:
    """List every model name by source, those that work offline marked (bundled first), with
    how a manifest names each source's models and points at local weights."""
    from galleryvis import sources

    listing = []
    for source in sources.listed():
        missing = source.missing()
        names = () if missing else source.names()
        offline = frozenset() if missing else source.offline()
        listing.append({"source": source.name, "usage": source.usage, "install": missing,
                        "models": [{"name": n, "offline": n in offline} for n in names]})
    if as_json:
        import json

        click.echo(json.dumps(listing, indent=2))
        return
    for entry in listing:
        click.echo(f"{entry['source']}: {entry['usage']}")
        if entry["install"]:
            click.echo(f"  not installed: {entry['install']}")
        for model in entry["models"]:
            click.echo(f"  {model['name']:40s} works offline" if model["offline"] else f"  {model['name']}")


@main.command()
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--model", "model_name", default="efficientnet_lite0", show_default=True,
              help="A model name (galleryvis models lists them).")
@click.option("--weights", default=None, help="DEFAULT, a weights enum name, a .pth path, or none.")
@click.option("--technique", "technique", default="gradcam", show_default=True)
@click.option("--target", default=None, help="Class index or name (default: top-1).")
@click.option("--layer", default=None, help="Dotted module name (default: last conv block).")
@click.option("--param", "params", multiple=True, help="Technique parameter as key=value (TOML value).")
@click.option("--variant", default=None,
              help="What to write: photo (default: the map over the whole photo, what the model saw outlined), "
                   "a display variant of the gallery (map, heatmap, overlay, saliency, ...), or raw (the float map).")
@click.option("-o", "--output", type=_LocalPath(path_type=Path, dir_okay=False), required=True,
              help="The file to write; its suffix chooses the format: .png, .jpg, .webp, or .npy (the raw map).")
@click.option("--cache-dir", type=_CACHE_FOLDER, default=Path(CACHE_DIRNAME))
@_DEVICE
@_errors_as_exit
def explain(image: Path, model_name: str, weights: str | None, technique: str, target: str | None,
            layer: str | None, params: tuple[str, ...], variant: str | None, output: Path, cache_dir: Path | str,
            device: str | None) -> None:
    """Explain the model's class for IMAGE with one technique, through the same engine and cache as
    a build, and print the model, the class explained with its probability, and the file written."""
    from galleryvis.build.explain import explain_one

    if device is not None:
        _device(device)
    explained = explain_one(image, model_name, weights, technique, target, layer, params, variant, output,
                            cache_dir, device)
    click.echo(explained.line())


@main.group()
def cache() -> None:
    """Inspect or clean the cache."""


@cache.command("info")
@click.option("--cache-dir", type=_CACHE_FOLDER, default=Path(CACHE_DIRNAME))
def cache_info(cache_dir: Path) -> None:
    """Entries and size of the cache."""
    from galleryvis.storage.cache import Cache

    c = Cache(cache_dir)
    click.echo(f"{cache_dir}: {len(c.keys())} entries, {c.size() / 1e6:.1f} MB")


@cache.command("clean")
@click.argument("manifest", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--cache-dir", type=_CACHE_FOLDER, default=None)
@click.option("--unreferenced", is_flag=True, help="Only remove entries the manifest no longer uses.")
@_errors_as_exit
def cache_clean(manifest: Path | None, cache_dir: Path | None, unreferenced: bool) -> None:
    """Remove all cache entries, or only those MANIFEST no longer references."""
    from galleryvis.storage.cache import Cache
    from galleryvis.build.pipeline import Options, referenced_keys

    m = _manifest(manifest) if unreferenced else None
    root = cache_dir or ((m.path.parent if m and m.path else Path.cwd()) / CACHE_DIRNAME)
    c = Cache(root)
    removed = c.clean(referenced_keys(m, Options(cache_dir=root)) if m is not None else None)
    click.echo(f"removed {removed} entries from {root}")

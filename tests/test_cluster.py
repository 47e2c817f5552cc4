"""The Ray executor: on a two-node cluster started here, a build's site equals a local build's
byte for byte (build.json timings aside), a SIGKILLed worker's task is retried, a failing cell
names its node, and a build without Ray installed is one line, exit 2."""
from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from galleryvis.cli import main

pytestmark = pytest.mark.slow  # a Ray cluster per test: `pytest -m "not slow"` leaves them out

PHOTOS = Path(__file__).resolve().parent.parent / "input_images"
REPO = Path(__file__).resolve().parent.parent
FAULTS = Path(tempfile.gettempdir()) / f"gv-faults-{os.getpid()}"  # see galleryvis.build.faults

MANIFEST = """
[gallery]
title = "cluster test"
ray_workers = 2

[[images]]
path = "cat.png"

[[images]]
path = "coffee.png"

[[models]]
name = "resnet18"
weights = "none"
size = 32

[[techniques]]
name = "vanilla"

[[techniques]]
name = "gradcam"
"""

PLUGIN = '''
"""Test techniques: one whose first call SIGKILLs its worker process, one that always fails."""
import os
import signal
import time
from pathlib import Path

from galleryvis.registry import technique


@technique("killed_once", output="input", signed=True, title="Killed once", needs=("input_grad",), paper="",
           summary="The input gradient; its first call kills the process running it.")
def killed_once(ctx):
    marker = Path(__file__).with_name("killed")
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return ctx.backward("plain").input_grad


@technique("slow_after_one", output="input", signed=True, title="Slow after one", needs=("input_grad",), paper="",
           summary="The input gradient; every call after the first in a project takes a minute.")
def slow_after_one(ctx):
    marker = Path(__file__).with_name("first-done")
    if marker.exists():
        time.sleep(60)
    marker.touch()
    return ctx.backward("plain").input_grad


@technique("always_fails", output="input", signed=True, title="Always fails", needs=("input_grad",), paper="",
           summary="Raises.")
def always_fails(ctx):
    raise RuntimeError("this technique always fails")
'''


@pytest.fixture(scope="module", autouse=True)
def _plugin_stays_in_this_module():
    """A build that loads the plugin registers its techniques in this process; they go again
    after this module, so the other test modules see the built-in registry only."""
    from galleryvis import registry

    techniques, modules = set(registry._REGISTRY), set(sys.modules)
    yield
    for name in set(registry._REGISTRY) - techniques:
        del registry._REGISTRY[name]
    for name in set(sys.modules) - modules:
        if name.startswith("galleryvis_plugin_"):
            del sys.modules[name]


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node on this machine, one CPU each, with a token of their own;
    their address (this process holds the token while the module runs). Stopped after."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed")
    from galleryvis.build import faults
    from galleryvis.build.cluster import local_cluster

    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))  # for the workers
    FAULTS.mkdir(exist_ok=True)
    mp.setenv(faults.ENV, str(FAULTS))  # the nodes' workers inherit it: a test arms a kill with a file there
    try:
        with local_cluster(Path(f"/tmp/gv-ray-{os.getpid()}"), nodes=2, cpus=1) as started:
            for name, value in started.env.items():
                mp.setenv(name, value)  # before this process imports ray: it reads them once
            yield started.address
    finally:
        mp.undo()
        shutil.rmtree(FAULTS, ignore_errors=True)


def _project(folder: Path, manifest: str) -> Path:
    folder.mkdir()
    for name in ("cat.png", "coffee.png"):
        shutil.copy(PHOTOS / name, folder / name)
    (folder / "galleryvis.toml").write_text(manifest)
    return folder / "galleryvis.toml"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """PLUGIN's file, one for the module (a technique registers once per process); its markers
    live beside it."""
    path = tmp_path_factory.mktemp("plugin") / "plugin.py"
    path.write_text(PLUGIN)
    return path


def _build(manifest: Path, *args: str):
    result = CliRunner().invoke(main, ["build", str(manifest), "-q", *args])
    assert "Traceback" not in result.output, result.output
    return result


def _differing(a: Path, b: Path) -> list[str]:
    """Files of two folders that differ, or are in one only (compared byte for byte)."""
    def walk(cmp: filecmp.dircmp) -> list[str]:
        names = cmp.left_only + cmp.right_only + cmp.funny_files
        names += filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)[1]
        return [str(Path(cmp.left) / f) for f in names] + [f for sub in cmp.subdirs.values() for f in walk(sub)]

    return walk(filecmp.dircmp(a, b, ignore=[]))


def _same_site(a: Path, b: Path) -> None:
    """Every file equal, build.json equal but for its timings (and its profile: the stages'
    seconds and the model passes the driver counted, which on Ray are the workers')."""
    assert [f for f in _differing(a, b) if not f.endswith("build.json")] == []
    timing_free = [{k: v for k, v in json.loads((site / "build.json").read_text()).items()
                    if k not in ("seconds_per_technique", "summary", "stages")} for site in (a, b)]
    assert timing_free[0] == timing_free[1]


def test_a_two_node_ray_build_is_byte_identical_to_a_local_build(tmp_path, cluster):
    manifest = _project(tmp_path / "p", MANIFEST)
    local = _build(manifest, "--no-cache")
    assert local.exit_code == 0, local.output
    shutil.move(manifest.parent / "site", tmp_path / "local-site")
    distributed = _build(manifest, "--executor", "ray", "--ray-address", cluster)
    assert distributed.exit_code == 0, distributed.output
    _same_site(tmp_path / "local-site", manifest.parent / "site")
    planned = _build(manifest, "--dry-run")  # the workers filled the shared cache
    assert "resnet18 / vanilla: 0 to compute, 2 cached" in planned.output, planned.output
    assert "resnet18 / gradcam: 0 to compute, 2 cached" in planned.output


def test_a_sigkilled_worker_is_retried_and_a_failing_cell_names_its_node(tmp_path, cluster, plugin, monkeypatch):
    text = MANIFEST.replace('ray_workers = 2', f'ray_workers = 1\nplugins = ["{plugin}"]') + (
        '[[techniques]]\nname = "killed_once"\n[[techniques]]\nname = "always_fails"\n')
    manifest = _project(tmp_path / "p", text)
    monkeypatch.setenv("RAY_ADDRESS", cluster)  # honoured without --ray-address
    distributed = _build(manifest, "--executor", "ray")
    assert plugin.with_name("killed").exists(), distributed.output  # a worker was killed mid-build
    assert distributed.exit_code == 1  # the failing technique's cells, and only those
    failures = [line for line in distributed.output.splitlines() if line.startswith("failed:")]
    assert len(failures) == 2 and all("always_fails" in f and "on node " in f for f in failures), failures
    cached = _build(manifest, "--dry-run")
    for tech in ("vanilla", "gradcam", "killed_once"):
        assert f"resnet18 / {tech}: 0 to compute, 2 cached" in cached.output, cached.output
    shutil.move(manifest.parent / "site", tmp_path / "ray-site")
    assert _build(manifest, "--no-cache").exit_code == 1  # locally (nothing killed now), for comparison
    for pictures in ("img", "thumbs"):  # every cell's pictures (the pages name the failing cells' nodes)
        assert _differing(tmp_path / "ray-site" / pictures, manifest.parent / "site" / pictures) == []


def test_a_killed_driver_leaves_every_finished_chunk_in_the_cache(tmp_path, cluster, plugin):
    text = MANIFEST.replace('ray_workers = 2', f'ray_workers = 1\nplugins = ["{plugin}"]').replace(
        'name = "gradcam"', 'name = "slow_after_one"')
    manifest = _project(tmp_path / "p", text)
    cache = manifest.parent / ".galleryvis-cache"
    driver = subprocess.Popen([sys.executable, "-m", "galleryvis", "build", str(manifest), "-q", "--batch-size", "1",
                               "--executor", "ray", "--ray-address", cluster], cwd=manifest.parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(cache.glob("??/*.json"))) < 4:  # two predictions, then cat.png's two maps
            assert time.monotonic() < deadline and driver.poll() is None, "no chunk reached the cache"
            time.sleep(0.1)
    finally:
        driver.kill()  # SIGKILL, while coffee.png's chunk sleeps on its worker
        driver.wait()
    assert not (manifest.parent / "site").exists()
    planned = _build(manifest, "--dry-run")
    for tech in ("vanilla", "slow_after_one"):
        assert f"resnet18 / {tech}: 1 to compute, 1 cached" in planned.output, planned.output


def test_a_worker_loads_weights_shipped_by_the_driver_where_their_path_is_missing(tmp_path):
    pytest.importorskip("ray")
    import torch
    import torchvision

    from galleryvis.build.cluster import _ModelWorker, _weights_file
    from galleryvis.build.jobs import load_models
    from galleryvis.config.manifest import load_manifest

    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "w.pth")
    manifest_path = _project(tmp_path / "p", MANIFEST.replace('weights = "none"', 'weights = "../w.pth"'))
    spec = load_manifest(manifest_path).models[0]
    shipped = _weights_file(spec).read_bytes()
    driver = load_models(load_manifest(manifest_path))["resnet18"]
    (tmp_path / "w.pth").unlink()  # a node that cannot read the driver's path
    worker = _ModelWorker(spec, manifest_path.parent, (), "cpu", 1, False, shipped)
    assert worker.adapter.fingerprint == driver.fingerprint
    assert not list(Path(tempfile.gettempdir()).glob("galleryvis-weights-*/w.pth"))  # removed once loaded


def test_no_shared_passes_reaches_the_ray_workers(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from galleryvis.build import cluster
    from galleryvis.build.jobs import Workspace
    from galleryvis.config.manifest import load_manifest
    from galleryvis.build.pipeline import Options, executor_for

    manifest = load_manifest(_project(tmp_path / "p", MANIFEST))
    executor = executor_for(manifest, Options(executor="ray", share_passes=False), Workspace({}, {}))
    assert isinstance(executor, cluster.RayExecutor) and executor.share is False
    made = []

    class Recording:
        def __init__(self, _ws, _batch_size, _fail_fast, share):
            made.append(share)

        def run(self, *_args):
            pass

    monkeypatch.setattr(cluster, "LocalExecutor", Recording)
    worker = cluster._ModelWorker(manifest.models[0], manifest.root, (), "cpu", 8, False, None, False)
    worker.compute([], None)
    assert made == [False]


@pytest.mark.parametrize("asked", ["--executor", "[gallery] executor"])
def test_asking_for_ray_without_it_installed_is_one_line_exit_2(tmp_path, monkeypatch, asked):
    text = MANIFEST.replace("ray_workers = 2", 'executor = "ray"') if asked.startswith("[") else MANIFEST
    manifest = _project(tmp_path / "p", text)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = _build(manifest, *(["--executor", "ray"] if asked == "--executor" else []))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ['error: the ray executor needs Ray: pip install "galleryvis[ray]"']
    assert not (manifest.parent / "site").exists()


FAULTY = """
[gallery]
title = "fault test"
ray_workers = 1

[[images]]
path = "cat.png"

[[images]]
path = "coffee.png"

[[models]]
name = "resnet18"
weights = "none"
size = 48

[[techniques]]
name = "gradcam"

[[techniques]]
name = "integrated_gradients"
params = { steps = 8 }
"""


def _arm(*kills: tuple[str, str]) -> list[Path]:
    """Arm one kill per (point, model or image id) in the cluster's fault folder; their files."""
    for old in FAULTS.iterdir():
        old.unlink()
    armed = [FAULTS / f"{point}-{n}" for n, (point, _) in enumerate(kills)]
    for path, (_, name) in zip(armed, kills):
        path.write_text(name)
    return armed


@pytest.fixture(scope="module")
def two_threads():
    """Torch on two threads in this process (the driver), restored after: the workers have one
    CPU each, so their sums would round otherwise than the local build's."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_pictures(tmp_path_factory, two_threads) -> Path:
    """FAULTY built locally, on two threads: its site."""
    manifest = _project(tmp_path_factory.mktemp("local") / "p", FAULTY)
    result = _build(manifest, "--no-cache", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    return manifest.parent / "site"


def _ray_build(tmp_path: Path, cluster: str, *kills: tuple[str, str], workers: int = 1):
    """FAULTY built on the cluster, one image a task, with ``kills`` armed: the CLI's result, the
    site, and build.json's fault counts; every kill fired."""
    armed = _arm(*kills)
    manifest = _project(tmp_path / "p", FAULTY.replace("ray_workers = 1", f"ray_workers = {workers}"))
    result = CliRunner().invoke(main, ["build", str(manifest), "--batch-size", "1", "--executor", "ray",
                                       "--ray-address", cluster])
    assert "Traceback" not in result.output, result.output
    assert [p.name for p in armed if not p.exists()] == [p.name for p in armed], result.output  # all fired
    site = manifest.parent / "site"
    return result, site, json.loads((site / "build.json").read_text())["summary"].get("faults")


def test_one_cpu_workers_draw_the_pictures_of_a_local_build_on_two_threads(tmp_path, cluster, local_pictures):
    result, site, faults = _ray_build(tmp_path, cluster)
    assert result.exit_code == 0, result.output
    assert faults == {"workers_restarted": 0, "tasks_retried": 0}
    assert "0 failed, 0 workers restarted, 0 tasks retried in " in result.output
    for pictures in ("img", "thumbs"):  # integrated gradients' clipped pictures included
        assert _differing(local_pictures / pictures, site / pictures) == []


@pytest.mark.parametrize("kill, restarted, retried", [
    (("load", "resnet18"), 1, 2),  # while loading the model: both queued tasks go to a new worker
    (("start", "cat"), 1, 2),  # during the first task (the second is queued on the same worker)
    (("start", "coffee"), 1, 1),  # between tasks: cat.png's is done, coffee.png's not begun
    (("end", "coffee"), 1, 1),  # the last task of the group, computed and cached but not returned
], ids=["loading", "first-task", "between-tasks", "last-task"])
def test_a_worker_killed_anywhere_never_fails_the_build(tmp_path, cluster, local_pictures, kill, restarted, retried):
    result, site, faults = _ray_build(tmp_path, cluster, kill)
    assert result.exit_code == 0, result.output
    assert faults == {"workers_restarted": restarted, "tasks_retried": retried}
    assert f"{restarted} worker restarted, {retried} task{'s' if retried > 1 else ''} retried" in result.output
    for pictures in ("img", "thumbs"):  # the local build's gallery, byte for byte
        assert _differing(local_pictures / pictures, site / pictures) == []


def test_workers_killed_one_after_the_other_never_fail_the_build(tmp_path, cluster, local_pictures):
    result, site, faults = _ray_build(tmp_path, cluster, ("start", "cat"), ("start", "cat"), workers=2)
    assert result.exit_code == 0, result.output
    assert faults == {"workers_restarted": 2, "tasks_retried": 2}  # cat.png's task, on a new worker each time
    for pictures in ("img", "thumbs"):
        assert _differing(local_pictures / pictures, site / pictures) == []


def test_a_task_that_kills_every_worker_fails_alone_after_its_retries(tmp_path, cluster, local_pictures):
    from galleryvis.build.cluster import RETRIES

    result, site, faults = _ray_build(tmp_path, cluster, *[("start", "coffee")] * (RETRIES + 1))
    assert result.exit_code == 1
    failures = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert len(failures) == 2 and all("coffee.png" in f and "ActorDiedError" in f for f in failures), failures
    # each death restarts one worker and sends coffee's task again; a task queued behind it on the
    # dying worker (cat's, when it has not run yet) is sent again too, so that count depends on timing
    assert faults["workers_restarted"] == RETRIES and RETRIES <= faults["tasks_retried"] <= 2 * RETRIES, faults
    assert _differing(local_pictures / "img" / "resnet18" / "cat", site / "img" / "resnet18" / "cat") == []

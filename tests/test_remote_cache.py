"""The cache at an fsspec URL: a real S3 API served here (moto's server) and ``memory://``, with
the local folder's guarantees: a torn or mixed write never reads as valid, checksums are
verified on read, builds sharing the cache reuse and never corrupt it."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from galleryvis.storage.cache import Cache, CacheWarning
from galleryvis.cli import main

PHOTOS = Path(__file__).resolve().parent.parent / "input_images"
KEY = "ab" * 32

MANIFEST = """
[[images]]
path = "cat.png"

[[models]]
name = "resnet18"
weights = "none"
size = 32

[[techniques]]
name = "vanilla"

[[techniques]]
name = "gradcam"
"""


@pytest.fixture(scope="module")
def s3() -> str:
    """An S3 server (moto) on a free port with one bucket; an ``s3://`` URL in it. Stopped after."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mp = pytest.MonkeyPatch()
    try:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")):
            mp.setenv(name, value)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the moto S3 server did not start")
                time.sleep(0.2)
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True).mkdir("gv-test")
        yield "s3://gv-test"
    finally:
        mp.undo()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture(params=["memory", "s3"])
def remote(request, tmp_path) -> str:
    """A fresh cache URL: ``memory://`` or a prefix in the S3 bucket."""
    if request.param == "memory":
        return f"memory://{tmp_path.name}"
    return f"{request.getfixturevalue('s3')}/{tmp_path.name}"


def _raw(cache: Cache, key: str) -> tuple[bytes, bytes]:
    npy, meta = cache.names(key)
    return cache._store.read(npy), cache._store.read(meta)


def test_an_entry_round_trips_losslessly_and_is_listed(remote):
    cache = Cache(remote)
    array = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    assert not cache.has(KEY) and cache.get(KEY) is None
    cache.put(KEY, array, {"model": "m"})
    entry = cache.get(KEY)
    assert cache.has(KEY) and np.array_equal(entry.array, array) and entry.meta == {"model": "m"}
    assert cache.keys() == [KEY] and cache.size() > array.nbytes
    assert cache.clean(keep=[KEY]) == 0 and cache.clean() == 1 and cache.keys() == []


def test_a_torn_or_mixed_entry_never_reads_as_valid(remote):
    cache = Cache(remote)
    cache.put(KEY, np.zeros(64, np.float32))
    npy, meta = _raw(cache, KEY)
    names = cache.names(KEY)
    cache._store.write(names[0], npy[:-7])  # a torn array under complete metadata
    with pytest.warns(CacheWarning, match="checksum"):
        assert cache.get(KEY) is None
    cache.put(KEY, np.ones(64, np.float32))
    cache._store.write(names[1], meta)  # another writer's metadata over this array
    with pytest.warns(CacheWarning, match="checksum"):
        assert cache.get(KEY) is None
    cache._store.write(names[1], meta[: len(meta) // 2])  # torn metadata
    with pytest.warns(CacheWarning):
        assert cache.get(KEY) is None
    cache._store.remove([names[1]])  # an array whose metadata never arrived: absent, silently
    assert not cache.has(KEY) and cache.get(KEY) is None


def test_concurrent_writers_of_one_key_leave_one_whole_entry_or_none(remote):
    arrays = [np.full(4096, i, np.float32) for i in range(2)]
    barrier = threading.Barrier(2)

    def writer(i: int) -> None:
        cache = Cache(remote)
        barrier.wait()
        for _ in range(10):
            cache.put(KEY, arrays[i])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)  # the last array and metadata may be different writers'
        entry = Cache(remote).get(KEY)
    assert entry is None or any(np.array_equal(entry.array, a) for a in arrays)


def test_a_cache_at_a_url_pickles_as_its_location(remote):
    import pickle

    Cache(remote).put(KEY, np.arange(3))
    copy = pickle.loads(pickle.dumps(Cache(remote, enabled=True)))
    assert copy.location == remote and np.array_equal(copy.get(KEY).array, np.arange(3))


def test_builds_sharing_an_s3_cache_reuse_every_cell(tmp_path, s3):
    """``[gallery] cache`` names the bucket; a second project with the same cells computes nothing."""
    url = f"{s3}/shared"
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        shutil.copy(PHOTOS / "cat.png", tmp_path / name / "cat.png")
        (tmp_path / name / "galleryvis.toml").write_text(f'[gallery]\ncache = "{url}"\n' + MANIFEST)
    first = CliRunner().invoke(main, ["build", str(tmp_path / "one" / "galleryvis.toml"), "-q"])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(main, ["build", str(tmp_path / "two" / "galleryvis.toml")])
    assert second.exit_code == 0, second.output
    assert "0 computed, 2 cached, 0 failed" in second.output
    for page in ("index.html", "technique-gradcam.html"):
        assert (tmp_path / "one" / "site" / page).read_bytes() == (tmp_path / "two" / "site" / page).read_bytes()
    info = CliRunner().invoke(main, ["cache", "info", "--cache-dir", url])
    # two maps, the prediction and the model's chunk sizes on this machine
    assert info.exit_code == 0 and f"{url}: 4 entries" in info.output
    assert not list(tmp_path.glob("*/.galleryvis-cache"))  # nothing cached locally


def test_a_cache_url_whose_filesystem_is_missing_is_one_line_exit_2(tmp_path):
    (tmp_path / "cat.png").write_bytes((PHOTOS / "cat.png").read_bytes())
    (tmp_path / "galleryvis.toml").write_text(MANIFEST)
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(main, ["build", str(tmp_path / "galleryvis.toml"), "--cache-dir", "nosuch://b/x"])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --cache-dir: 'nosuch://b/x'"), lines
    assert sorted(tmp_path.rglob("*")) == before

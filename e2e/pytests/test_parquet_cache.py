"""/kerchunk.parq when the index cache misbehaves (regression: it answered 503 "retry
shortly" forever and logged an ERROR per request): references deleted from the cache are
written again once; a cache that cannot hold them gets a 503 saying why, logged once."""
from __future__ import annotations

import shutil
import time

import fsspec
import requests
import xarray as xr

from conftest import start_server, stop_server
from helpers import open_reference
from test_fidelity import compare_datasets

NAME = "edge_series"


def _parq(url: str) -> requests.Response:
    return requests.get(f"{url}/datasets/{NAME}/kerchunk.parq/.zmetadata", timeout=30)


def _settle(url: str, timeout: float = 60) -> requests.Response:
    """The first answer that is not 503 "being written" (which must say when to retry)."""
    deadline = time.monotonic() + timeout
    while True:
        r = _parq(url)
        if not (r.status_code == 503 and "being written" in r.json()["error"]):
            return r
        assert r.headers.get("retry-after") == "1", r.headers
        assert time.monotonic() < deadline, "Parquet references never appeared"
        time.sleep(0.1)


def _log_lines(log, needle: str) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if needle in line]


def test_deleted_cache_is_written_again(corpus, tmp_path):
    spec = corpus[NAME]
    cache = tmp_path / "cache"
    url, proc, log = start_server(["serve", NAME, *spec["files"]], tmp_path, "pqdel",
                                  extra_env={"CLOUDIFY_CACHE_DIR": str(cache)})
    try:
        assert _settle(url).status_code == 200
        shutil.rmtree(cache)
        first = _parq(url)
        assert first.status_code == 503 and "being written" in first.json()["error"], first.text
        for _ in range(10):  # more requests while it is written start no second writer
            _parq(url)
        r = _settle(url)
        assert r.status_code == 200, r.text
        assert list((cache / "refs").glob(f"{NAME}-*.parq/.zmetadata")), "not written again"
        fs = fsspec.filesystem("reference", fo=f"{url}/datasets/{NAME}/kerchunk.parq", remote_protocol="file")
        ds = xr.open_dataset(fs.get_mapper(""), engine="zarr", zarr_format=2, consolidated=False).load()
        problems = compare_datasets(ds, open_reference(spec, raw=False).load(), raw=False, label="rewritten")
        assert not problems, "\n".join(problems[:20])
    finally:
        stop_server(proc)
    assert len(_log_lines(log, "vanished from the cache")) == 1, log.read_text()[-3000:]
    assert len(_log_lines(log, "Parquet references written")) == 2
    assert not _log_lines(log, "ERROR"), "\n".join(_log_lines(log, "ERROR"))


def test_unwritable_cache_says_why_once(corpus, tmp_path):
    """`<cache>/refs` is a regular file, so no directory can be made there (chmod does not
    stop root; a file in the path does)."""
    spec = corpus[NAME]
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "refs").write_text("not a directory")
    url, proc, log = start_server(["serve", NAME, *spec["files"]], tmp_path, "pqro",
                                  extra_env={"CLOUDIFY_CACHE_DIR": str(cache)})
    try:
        answers = [_settle(url)] + [_parq(url) for _ in range(20)]
        for r in answers:
            assert r.status_code == 503, (r.status_code, r.text)
            msg = r.json()["error"]
            assert "unavailable" in msg and f"{cache / 'refs'} is not a directory" in msg, msg
            assert "retry shortly" not in msg and "kerchunk.json" in msg, msg
            assert 1 <= int(r.headers["retry-after"]) <= 60, r.headers
        # everything else serves, from the same cache
        assert requests.get(f"{url}/datasets/{NAME}/kerchunk.json", timeout=30).status_code == 200
        assert requests.get(f"{url}/datasets/{NAME}/zarr/.zmetadata", timeout=30).status_code == 200
    finally:
        stop_server(proc)
    assert len(_log_lines(log, "Parquet references unavailable")) == 1, log.read_text()[-3000:]
    assert not _log_lines(log, "ERROR"), "\n".join(_log_lines(log, "ERROR"))

"""Tape archives as sources: recall, stage, serve — without ever lying to a client.

Real CMIP6 files (esmvaltool-sample-data) are put in a fake archive below a temporary
directory and indexed while "on disk" (a server over them answers /kerchunk.json); the
references, rewritten to archive paths (/arch/...), are then all a second server has: its
data files are on tape, recalled by a fake ``slk`` (fake_slk.py: delays, tapes, failures, a
call log) or through a WLCG Tape REST emulator (wlcg_tape_emulator.py), into a staging cache.

What a client must see: metadata, listing, STAC and intake without any recall; a chunk of a
file on tape is 503 with Retry-After and a JSON body naming state and job (never 404, never
2xx without data); once recalled, the same bytes xarray reads from the files; one recall per
file however many requests wait; files of one tape in one job; a failed recall is 502 naming
the file and the archive's reason; a tiny cache evicts; fsspec raises on 503, a retrying zarr
client reads the right values, and a 404 would have been silent fill values.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import requests
import xarray as xr

from fake_slk import command_driver
from conftest import find_binary, start_server, stop_server, wait_until_settled
from helpers import cmip6_root

DELAY = 3.0  # seconds a recall takes
WAIT = 1  # seconds a request waits for a recall before 503

# (dataset, CMIP6 directory below the sample data, tape)
SETS = [
    ("tape_mri", "timeseries/CMIP6/CMIP/MRI/MRI-ESM2-0/historical/r1i1p1f1/Amon/ta/gn/v20190308", "T1"),
    ("tape_esm4", "timeseries/CMIP6/CMIP/NOAA-GFDL/GFDL-ESM4/historical/r1i1p1f1/Amon/ta/gr1/v20190726", "T2"),
    ("tape_cm4", "timeseries/CMIP6/CMIP/NOAA-GFDL/GFDL-CM4/historical/r1i1p1f1/Amon/ta/gr1/v20180701", "T3"),
    ("tape_bad", "timeseries/CMIP6/CMIP/CSIRO/ACCESS-ESM1-5/historical/r1i1p1f1/Amon/ta/gn/v20191115", "T9"),
    # two datasets on one tape
    ("tape_cm2", "timeseries/CMIP6/CMIP/CSIRO-ARCCSS/ACCESS-CM2/historical/r1i1p1f1/Amon/ta/gn/v20191108", "T4"),
    ("tape_iitm", "timeseries/CMIP6/CMIP/CCCR-IITM/IITM-ESM/historical/r1i1p1f1/day/ta/gn/v20191226", "T4"),
]


def _write_cfg(path: Path, datasets: list[dict]) -> Path:
    path.write_text(json.dumps({"datasets": datasets}))
    return path


def _serve(tmp: Path, tag: str, datasets: list[dict], cache: Path | None = None):
    cfg = _write_cfg(tmp / f"{tag}.yaml", datasets)
    url, proc, log = start_server(["serve", "--config", str(cfg)], tmp, tag,
                                  extra_env={"CLOUDIFY_CACHE_DIR": str(cache or tmp / f"{tag}-cache")})
    try:
        st = wait_until_settled(url, [d["name"] for d in datasets], proc)
    except Exception:
        stop_server(proc)
        raise
    return url, proc, log, st


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The fake archive (files below ``root``/arch/proj/<tape>/) and each dataset's
    references, made while the files were on disk and rewritten to archive paths."""
    tmp = tmp_path_factory.mktemp("tape")
    root = tmp / "archive"
    files = {}
    for name, rel, tape in SETS:
        src = sorted((cmip6_root() / rel).glob("*.nc"))
        assert src, rel
        dest = root / "arch" / "proj" / tape
        dest.mkdir(parents=True, exist_ok=True)
        files[name] = []
        for f in src:
            shutil.copyfile(f, dest / f.name)
            files[name].append(dest / f.name)
    # index on disk (`cloudify index`, one reference file per data file, as a provider does
    # before archiving), then the references rewritten to the archive's paths. Coordinates
    # are inlined (the default: up to 16 KiB), so catalogs need no recall; `ta` is referenced
    # (but for the second MRI file, small enough to be inlined too).
    refs = {}
    for name, _, _ in SETS:
        refs[name] = []
        for f in files[name]:
            p = tmp / f"{f.stem}.refs.json"
            r = subprocess.run([find_binary(), "index", "--no-cache", str(f),
                                "-o", str(p)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            assert r.returncode == 0, r.stderr
            text = p.read_text().replace(str(root), "")
            assert str(root) not in text
            p.write_text(text)
            refs[name].append(str(p))
        assert any("file:///arch/proj/" in Path(p).read_text() for p in refs[name]), name
    return {"tmp": tmp, "root": root, "files": files, "refs": refs}


def _tape_storage(state: Path, staging: Path, **extra) -> dict:
    driver = command_driver(state, tape_of=True)
    tape = {"driver": driver, "stagingDir": str(staging), "waitSeconds": WAIT, "batchWindowMs": 300,
            "pollMs": 200, "failureBackoffSeconds": 2, "retryAfterSeconds": 5, **extra}
    return {"tape": tape}


class Slk:
    """The fake archive's state directory and call log."""

    def __init__(self, state: Path, root: Path, fail: list[str]):
        state.mkdir(parents=True, exist_ok=True)
        (state / "config.json").write_text(json.dumps({"archive": str(root), "delay": DELAY, "fail": fail}))
        self.state = state

    def calls(self, verb: str) -> list[list[str]]:
        log = self.state / "calls.log"
        if not log.exists():
            return []
        return [c["args"] for c in map(json.loads, log.read_text().splitlines()) if c["verb"] == verb]

    def recalls_of(self, path_part: str) -> list[list[str]]:
        return [c for c in self.calls("recall") if any(path_part in a for a in c)]


@pytest.fixture(scope="module")
def tape(archive):
    tmp = archive["tmp"]
    bad = [f"/arch/proj/T9/{p.name}" for p in archive["files"]["tape_bad"]]
    slk = Slk(tmp / "slk", archive["root"], bad)
    storage = _tape_storage(slk.state, tmp / "staging")
    datasets = [{"name": name, "sources": archive["refs"][name], "referenceRoots": ["/arch"],
                 "storage": storage} for name, _, _ in SETS]
    url, proc, log, status = _serve(tmp, "tape", datasets)
    yield {"url": url, "slk": slk, "status": status, "log": log, "tmp": tmp}
    alive = proc.poll() is None
    stop_server(proc)
    assert alive, log.read_text(errors="replace")[-4000:]


def _chunk_keys(url: str, name: str, var: str = "ta") -> tuple[dict, list[str]]:
    meta = requests.get(f"{url}/datasets/{name}/zarr/{var}/.zarray", timeout=30).json()
    n = [-(-s // c) for s, c in zip(meta["shape"], meta["chunks"])]
    first = ".".join("0" for _ in n)
    last = ".".join([str(n[0] - 1)] + ["0"] * (len(n) - 1))
    return meta, [first, last]


def _until_ok(url: str, timeout: float = 30) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(url, timeout=60)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        time.sleep(min(float(r.headers.get("Retry-After", 1)), 0.5))


def _original(files: list[Path]) -> xr.Dataset:
    return xr.open_mfdataset([str(f) for f in files], combine="by_coords", data_vars="minimal",
                             coords="minimal", compat="override", mask_and_scale=False,
                             decode_times=False).load()


def test_metadata_listing_stac_intake_without_recalls(tape):
    url, slk = tape["url"], tape["slk"]
    states = {d["name"]: d["state"] for d in tape["status"]["datasets"]}
    assert all(states[n] == "ready" for n, _, _ in SETS), tape["status"]
    assert set(requests.get(f"{url}/datasets", timeout=30).json()) >= {n for n, _, _ in SETS}
    for name, _, _ in SETS:
        for path in ["/zarr/.zmetadata", "/zarr/ta/.zarray", "/stac", "/catalog.yaml", ""]:
            r = requests.get(f"{url}/datasets/{name}{path}", timeout=30)
            assert r.status_code == 200, (name, path, r.status_code, r.text[:300])
    for path in ["/intake.yaml", "/stac-collection-all.json"]:
        assert requests.get(url + path, timeout=30).status_code == 200
    ds = xr.open_zarr(f"{url}/datasets/tape_mri/zarr", consolidated=True, decode_times=False)
    assert ds["ta"].shape[0] > 0
    assert slk.calls("recall") == [], "metadata recalled files from tape"
    loc = requests.get(f"{url}/datasets/tape_mri/locality", timeout=30).json()
    # the second MRI file's `ta` is inlined in its references: one file on tape
    assert [f["state"] for f in loc["files"]] == ["nearline"], loc


def test_first_read_is_503_then_the_files_values(tape, archive):
    url, slk = tape["url"], tape["slk"]
    _, (first, _) = _chunk_keys(url, "tape_mri")
    r = requests.get(f"{url}/datasets/tape_mri/zarr/ta/{first}", timeout=60)
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert int(r.headers["Retry-After"]) >= 1
    body = r.json()
    assert body["state"] in ("queued", "recalling") and "/arch/proj/T1/" in body["file"], body
    assert "on tape" in body["error"] and "tape_mri" in body["error"]
    # the recall runs: a later 503 names its job and the archive's estimate
    time.sleep(0.5)
    r = requests.get(f"{url}/datasets/tape_mri/zarr/ta/{first}", timeout=60)
    if r.status_code == 503:
        assert r.json()["job"] and r.json()["state"] == "recalling", r.json()
        assert 1 <= int(r.headers["Retry-After"]) <= DELAY + 1, r.headers
        loc = requests.get(f"{url}/datasets/tape_mri/locality", timeout=30).json()
        assert loc["queue"]["jobsRunning"] == 1 and "recalling" in {f["state"] for f in loc["files"]}, loc
    r = _until_ok(f"{url}/datasets/tape_mri/zarr/ta/{first}")
    assert r.status_code == 200, r.text[:300]
    assert len(slk.recalls_of("/T1/")) == 1, slk.recalls_of("/T1/")
    # xarray over the served store equals the files
    ds = xr.open_zarr(f"{url}/datasets/tape_mri/zarr", consolidated=True, mask_and_scale=False,
                      decode_times=False).load()
    orig = _original(archive["files"]["tape_mri"])
    np.testing.assert_array_equal(ds["ta"].values, orig["ta"].values)
    np.testing.assert_array_equal(ds["time"].values, orig["time"].values)
    loc = requests.get(f"{url}/datasets/tape_mri/locality", timeout=30).json()
    online = [f for f in loc["files"] if f["state"] == "online"]
    assert len(online) == 1 and "195001" in online[0]["path"], loc
    # staged files mirror their archive paths, and nothing half-written is left
    staged = sorted(p.relative_to(tape["tmp"] / "staging").as_posix()
                    for p in (tape["tmp"] / "staging").rglob("*") if p.is_file())
    assert staged and all(s.startswith("arch/proj/") and ".part-" not in s for s in staged), staged


def test_files_on_one_tape_make_one_job(tape, archive):
    url, slk = tape["url"], tape["slk"]
    keys = [f"{url}/datasets/{n}/zarr/ta/{_chunk_keys(url, n)[1][0]}" for n in ("tape_cm2", "tape_iitm")]
    with cf.ThreadPoolExecutor(2) as ex:
        codes = list(ex.map(lambda k: _until_ok(k).status_code, keys))
    assert codes == [200, 200]
    recalls = slk.recalls_of("/T4/")
    assert len(recalls) == 1 and len(recalls[0]) == 2, recalls
    for n in ("tape_cm2", "tape_iitm"):
        ds = xr.open_zarr(f"{url}/datasets/{n}/zarr", consolidated=True, mask_and_scale=False,
                          decode_times=False).load()
        np.testing.assert_array_equal(ds["ta"].values, _original(archive["files"][n])["ta"].values)


def test_concurrent_requests_of_one_file_make_one_recall(tape, archive):
    url, slk = tape["url"], tape["slk"]
    _, (first, _) = _chunk_keys(url, "tape_esm4")
    key = f"{url}/datasets/tape_esm4/zarr/ta/{first}"
    with cf.ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(lambda _: _until_ok(key).status_code, range(8)))
    assert codes == [200] * 8
    assert len(slk.recalls_of("/T2/")) == 1, slk.recalls_of("/T2/")
    assert len([c for c in slk.calls("retrieve") if "/T2/" in c[1]]) == 1
    metrics = requests.get(f"{url}/metrics", timeout=30).text
    for m in ["cloudify_tape_queue_files", "cloudify_tape_recalls_in_flight", "cloudify_tape_recall_seconds_count",
              "cloudify_tape_cache_bytes", "cloudify_tape_cache_evictions", "cloudify_tape_unavailable_total"]:
        assert m in metrics, m
    unavailable = [l for l in metrics.splitlines() if l.startswith("cloudify_tape_unavailable_total")]
    assert float(unavailable[0].split()[-1]) >= 1


def test_failed_recall_is_502_naming_file_and_reason_then_retried(tape):
    url, slk = tape["url"], tape["slk"]
    _, (first, _) = _chunk_keys(url, "tape_bad")
    r = _until_ok(f"{url}/datasets/tape_bad/zarr/ta/{first}")
    assert r.status_code == 502, (r.status_code, r.text[:300])
    body = r.json()
    assert "/arch/proj/T9/" in body["error"] and "tape T9 unreadable" in body["error"], body
    assert body["state"] == "failed" and int(r.headers["Retry-After"]) >= 1
    n = len(slk.recalls_of("/T9/"))
    # within the backoff: answered at once, no new recall
    assert requests.get(f"{url}/datasets/tape_bad/zarr/ta/{first}", timeout=60).status_code == 502
    assert len(slk.recalls_of("/T9/")) == n
    time.sleep(2.5)
    requests.get(f"{url}/datasets/tape_bad/zarr/ta/{first}", timeout=60)
    assert len(slk.recalls_of("/T9/")) == n + 1, "not retried after the backoff"


def test_fsspec_raises_on_503_and_a_retrying_zarr_client_reads_the_values(tape, archive):
    import fsspec
    import zarr

    url = tape["url"]
    _, (first, _) = _chunk_keys(url, "tape_cm4")
    store = f"{url}/datasets/tape_cm4/zarr"
    # fsspec: a 503 is an error, never chunk data or a fill value
    fs = fsspec.filesystem("http")
    with pytest.raises(Exception) as e:
        fs.cat(f"{store}/ta/{first}")
    assert "503" in str(e.value) or "Service Unavailable" in str(e.value), repr(e.value)
    with pytest.raises(Exception):
        xr.open_zarr(store, consolidated=True, decode_times=False)["ta"].load()

    # a client that retries 503s (obstore's HTTP store, as zarr-python's ObjectStore uses)
    from obstore.store import HTTPStore
    from zarr.storage import ObjectStore

    http = HTTPStore.from_url(store, client_options={"allow_http": True, "timeout": "60s"},
                              retry_config={"max_retries": 30, "retry_timeout": timedelta(seconds=60),
                                            "backoff": {"init_backoff": timedelta(seconds=0.5),
                                                        "max_backoff": timedelta(seconds=2), "base": 2}})
    z = zarr.open_group(ObjectStore(http, read_only=True), mode="r", zarr_format=2)
    got = z["ta"][...]
    orig = _original(archive["files"]["tape_cm4"])
    np.testing.assert_array_equal(got, orig["ta"].values)


def test_a_404_would_have_been_silent_fill_values(tape, tmp_path):
    """Why the server never answers 404 for a chunk it cannot read now: a zarr client reads a
    missing chunk as the fill value, without any error. Here a plain HTTP server that has the
    metadata but answers 404 for the chunks, as a naive tape gateway would."""
    import http.server
    import zarr

    url = tape["url"]
    d = tmp_path / "store"
    (d / "ta").mkdir(parents=True)
    (d / ".zmetadata").write_bytes(requests.get(f"{url}/datasets/tape_esm4/zarr/.zmetadata", timeout=30).content)
    for k in [".zgroup", ".zattrs"]:
        (d / k).write_bytes(requests.get(f"{url}/datasets/tape_esm4/zarr/{k}", timeout=30).content)
    for k in [".zarray", ".zattrs"]:
        (d / "ta" / k).write_bytes(requests.get(f"{url}/datasets/tape_esm4/zarr/ta/{k}", timeout=30).content)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(d))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        z = zarr.open_array(f"http://127.0.0.1:{httpd.server_address[1]}/ta", mode="r", zarr_format=2)
        silent = np.asarray(z[0], dtype="f8")  # no error raised: the 404 is taken for "never written"
        fill = 0.0 if z.fill_value is None else float(z.fill_value)
        assert np.all((silent == fill) | (np.isnan(silent) & np.isnan(fill))), silent
        # what the tape server answers for the same chunk instead: data (it was recalled)
        real = np.asarray(zarr.open_array(f"{url}/datasets/tape_esm4/zarr/ta", mode="r", zarr_format=2)[0])
        assert not np.array_equal(real, silent)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_recall_command_that_cannot_run_fails_the_dataset_naming_it(archive, tmp_path):
    """A misconfigured command driver (its `slk` not installed) is reported when the dataset
    opens — `/status` says `failed` naming the field and the program, its requests answer 503
    with that reason (never 404: a Zarr client would read fill values) — while the server's
    other datasets serve; not discovered only by the first chunk read."""
    slk = Slk(tmp_path / "slk", archive["root"], [])
    bad = _tape_storage(slk.state, tmp_path / "staging-bad")
    bad["tape"]["driver"]["command"]["recall"] = ["/nonexistent/bin/slk", "recall", "{files}"]
    good = _tape_storage(slk.state, tmp_path / "staging-good")
    datasets = [
        {"name": "tape_nocmd", "sources": archive["refs"]["tape_esm4"], "referenceRoots": ["/arch"], "storage": bad},
        {"name": "tape_ok", "sources": archive["refs"]["tape_esm4"], "referenceRoots": ["/arch"], "storage": good},
    ]
    url, proc, log, st = _serve(tmp_path, "nocmd", datasets)
    try:
        states = {d["name"]: d for d in st["datasets"]}
        assert states["tape_ok"]["state"] == "ready", st
        assert states["tape_nocmd"]["state"] == "failed", st
        why = states["tape_nocmd"]["error"]
        assert "tape.driver.command.recall" in why and "/nonexistent/bin/slk" in why, why
        r = requests.get(f"{url}/datasets/tape_nocmd/zarr/.zmetadata", timeout=30)
        assert r.status_code == 503 and "/nonexistent/bin/slk" in r.json()["error"], (r.status_code, r.text[:300])
        assert requests.get(f"{url}/datasets/tape_ok/zarr/.zmetadata", timeout=30).status_code == 200
        assert not slk.calls("recall"), "nothing was recalled"
    finally:
        stop_server(proc)


def test_stage_route_and_bad_input(tape):
    url = tape["url"]
    r = requests.post(f"{url}/datasets/tape_cm4/stage?variables=ta", timeout=30)
    assert r.status_code == 202 and r.headers["Location"] == "/datasets/tape_cm4/locality", r.text
    assert r.json()["status"] == "/datasets/tape_cm4/locality"
    r = requests.post(f"{url}/datasets/tape_cm4/stage?variables=nope", timeout=30)
    assert r.status_code == 400 and "nope" in r.json()["error"]
    r = requests.get(f"{url}/datasets/nope/locality", timeout=30)
    assert r.status_code == 404


def test_tiny_budget_evicts_least_recently_used(archive, tmp_path):
    """A budget of one file: reading a second file evicts the first (not in use any more);
    both read the right values."""
    slk = Slk(tmp_path / "slk", archive["root"], [])
    sizes = {n: sum(f.stat().st_size for f in archive["files"][n]) for n in ("tape_esm4", "tape_cm4")}
    storage = _tape_storage(slk.state, tmp_path / "staging", budgetBytes=max(sizes.values()) + 1000)
    datasets = [{"name": n, "sources": archive["refs"][n], "referenceRoots": ["/arch"], "storage": storage}
                for n in sizes]
    url, proc, log, _ = _serve(tmp_path, "tiny", datasets)
    try:
        for n in sizes:
            requests.post(f"{url}/datasets/{n}/stage", timeout=30)
            deadline = time.monotonic() + 30
            while requests.get(f"{url}/datasets/{n}/locality", timeout=30).json()["online"] < 1:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)
            ds = xr.open_zarr(f"{url}/datasets/{n}/zarr", consolidated=True, mask_and_scale=False,
                              decode_times=False).load()
            np.testing.assert_array_equal(ds["ta"].values, _original(archive["files"][n])["ta"].values)
        first = requests.get(f"{url}/datasets/tape_esm4/locality", timeout=30).json()
        second = requests.get(f"{url}/datasets/tape_cm4/locality", timeout=30).json()
        assert first["files"][0]["state"] == "nearline" and second["files"][0]["state"] == "online", (first, second)
        assert second["cache"]["evictions"] == 1 and second["cache"]["bytes"] <= second["cache"]["budgetBytes"]
        assert not any((tmp_path / "staging").rglob(archive["files"]["tape_esm4"][0].name))
    finally:
        stop_server(proc)


def test_wlcg_tape_rest_driver(archive, tmp_path):
    from wlcg_tape_emulator import Emulator

    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    bad = f"/arch/proj/T9/{archive['files']['tape_bad'][0].name}"
    emu = Emulator(archive["root"], "s3cret-token", delay=DELAY, fail=(bad,))
    try:
        storage = {"tape": {"driver": {"wlcg": {"endpoint": f"{emu.url}/api/v1/tape", "dataUrl": f"{emu.url}/data",
                                                "tokenFile": str(token)}},
                            "stagingDir": str(tmp_path / "staging"), "waitSeconds": WAIT, "batchWindowMs": 200,
                            "pollMs": 200, "retryAfterSeconds": 4}}
        datasets = [{"name": n, "sources": archive["refs"][n], "referenceRoots": ["/arch"], "storage": storage}
                    for n in ("tape_cm4", "tape_bad")]
        url, proc, log, _ = _serve(tmp_path, "wlcg", datasets)
        try:
            loc = requests.get(f"{url}/datasets/tape_cm4/locality", timeout=30).json()
            assert loc["files"][0]["archive"] == "NEARLINE", loc
            assert not [c for c in emu.calls if c[0] == "POST" and c[1].endswith("/stage")]
            _, (first, _) = _chunk_keys(url, "tape_cm4")
            r = requests.get(f"{url}/datasets/tape_cm4/zarr/ta/{first}", timeout=60)
            assert r.status_code == 503 and r.headers["Retry-After"] == "4", (r.status_code, r.text)
            assert _until_ok(f"{url}/datasets/tape_cm4/zarr/ta/{first}").status_code == 200
            ds = xr.open_zarr(f"{url}/datasets/tape_cm4/zarr", consolidated=True, mask_and_scale=False,
                              decode_times=False).load()
            np.testing.assert_array_equal(ds["ta"].values, _original(archive["files"]["tape_cm4"])["ta"].values)
            assert len([c for c in emu.calls if c == ("POST", "/api/v1/tape/stage")]) == 1
            assert any(c[1].startswith("/api/v1/tape/release/") for c in emu.calls)
            _, (bfirst, _) = _chunk_keys(url, "tape_bad")
            r = _until_ok(f"{url}/datasets/tape_bad/zarr/ta/{bfirst}")
            assert r.status_code == 502 and "tape VOL042 is disabled" in r.json()["error"], r.text
        finally:
            stop_server(proc)
        # a wrong token: the archive refuses, the client gets a 502 naming why
        token.write_text("wrong\n")
        url, proc, log, _ = _serve(tmp_path, "wlcg-badtoken", [
            {**datasets[0], "storage": {"tape": {**storage["tape"], "stagingDir": str(tmp_path / "staging2")}}}])
        try:
            r = _until_ok(f"{url}/datasets/tape_cm4/zarr/ta/{first}")
            assert r.status_code == 502 and "401" in r.json()["error"], r.text
        finally:
            stop_server(proc)
    finally:
        emu.stop()


def test_an_archive_that_stops_answering_is_reported_while_staged_files_still_serve(archive, tmp_path):
    """The WLCG endpoint goes away under a served dataset: within a health-check interval
    `/status` says `tape: failing` naming the endpoint's error (the operator shows it as
    `Degraded=True, TapeUnavailable`) and `cloudify_tape_archives_failing` is 1; the datasets
    stay ready, a staged file is still served, a file on tape is 502 naming why (never 404,
    never 2xx). When the archive answers again on its address, the state is `ok` again and
    the file on tape is recalled and served."""
    from wlcg_tape_emulator import Emulator

    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    emu = Emulator(archive["root"], "s3cret-token", delay=0.5)
    port = emu.httpd.server_address[1]
    storage = _wlcg_storage(emu, token, tmp_path / "staging", healthCheckSeconds=1, failureBackoffSeconds=1)
    names = ("tape_cm4", "tape_mri")
    datasets = [{"name": n, "sources": archive["refs"][n], "referenceRoots": ["/arch"], "storage": storage}
                for n in names]
    url, proc, log, _ = _serve(tmp_path, "wlcg-health", datasets)

    def status(name: str) -> dict:
        return next(d for d in requests.get(f"{url}/status", timeout=10).json()["datasets"] if d["name"] == name)

    def failing_metric() -> float:
        text = requests.get(f"{url}/metrics", timeout=10).text
        return next(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith("cloudify_tape_archives_failing "))

    try:
        _eventually(lambda: status("tape_cm4").get("tape", {}).get("state") == "ok", "the archive checked, ok")
        assert status("tape_mri")["tape"]["state"] == "ok" and failing_metric() == 0
        _, (staged, _) = _chunk_keys(url, "tape_cm4")
        _, (on_tape, _) = _chunk_keys(url, "tape_mri")
        assert _until_ok(f"{url}/datasets/tape_cm4/zarr/ta/{staged}").status_code == 200

        emu.stop()
        _eventually(lambda: status("tape_cm4").get("tape", {}).get("state") == "failing",
                    "the archive reported failing", timeout=20)
        st = status("tape_cm4")
        assert st["state"] == "ready", st
        assert "archiveinfo" in st["tape"]["error"], st
        assert st["tape"]["checked_seconds_ago"] <= 3, st
        assert failing_metric() == 1
        # staged: served from the cache as before
        r = requests.get(f"{url}/datasets/tape_cm4/zarr/ta/{staged}", timeout=30)
        assert r.status_code == 200, r.text
        # on tape: the recall cannot be made; a clear 502, never a 404 (fill values) or a 2xx
        r = _until_ok(f"{url}/datasets/tape_mri/zarr/ta/{on_tape}")
        assert r.status_code == 502, (r.status_code, r.text)
        assert "/stage" in r.json()["error"], r.text

        emu = Emulator(archive["root"], "s3cret-token", delay=0.5, port=port)
        _eventually(lambda: status("tape_cm4").get("tape", {}).get("state") == "ok",
                    "the archive reported answering again", timeout=20)
        assert "error" not in status("tape_cm4")["tape"] and failing_metric() == 0

        def served() -> bool:
            return requests.get(f"{url}/datasets/tape_mri/zarr/ta/{on_tape}", timeout=60).status_code == 200

        _eventually(served, "the file on tape recalled once the archive answers", timeout=40)
        assert proc.poll() is None
    finally:
        stop_server(proc)
        emu.stop()


def _wlcg_storage(emu, token: Path, staging: Path, **extra) -> dict:
    return {"tape": {"driver": {"wlcg": {"endpoint": f"{emu.url}/api/v1/tape", "dataUrl": f"{emu.url}/data",
                                         "tokenFile": str(token), "pinLifetimeSeconds": 3600}},
                     "stagingDir": str(staging), "waitSeconds": WAIT, "batchWindowMs": 200,
                     "pollMs": 200, "retryAfterSeconds": 4, **extra}}


def _eventually(cond, what: str, timeout: float = 30):
    """Waits for ``cond()`` (work the server finishes after answering, e.g. a release once the
    whole job is copied); fails naming ``what`` if it never holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _stage_posts(emu) -> list:
    return [c for c in emu.calls if c == ("POST", "/api/v1/tape/stage")]


def test_wlcg_requests_are_batched_and_pins_released_after_use(archive, tmp_path):
    """Chunks of five files on four tapes asked for at once: one stage request naming all five
    (the WLCG API orders a request's files by tape itself, so `maxTapesPerJob`, which cuts
    jobs of the command driver at whole tapes, does not split it), each file with the
    configured pin lifetime; once the files are in the staging cache the request releases
    them, so the site's disk buffer holds none of them although the lifetime (an hour) has
    not run out, and reads still come from the cache."""
    from wlcg_tape_emulator import Emulator

    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    emu = Emulator(archive["root"], "s3cret-token", delay=DELAY)
    names = ["tape_mri", "tape_esm4", "tape_cm4", "tape_cm2", "tape_iitm"]
    try:
        storage = _wlcg_storage(emu, token, tmp_path / "staging", batchWindowMs=2000, maxTapesPerJob=1)
        datasets = [{"name": n, "sources": archive["refs"][n], "referenceRoots": ["/arch"], "storage": storage}
                    for n in names]
        url, proc, log, _ = _serve(tmp_path, "wlcg-batch", datasets)
        try:
            keys = [f"{url}/datasets/{n}/zarr/ta/{_chunk_keys(url, n)[1][0]}" for n in names]
            with cf.ThreadPoolExecutor(len(keys)) as ex:
                codes = list(ex.map(lambda k: _until_ok(k).status_code, keys))
            assert codes == [200] * len(keys), log.read_text()[-3000:]
            assert len(_stage_posts(emu)) == 1, emu.calls
            body = emu.stage_bodies[0]
            paths = [f["path"] for f in body["files"]]
            assert len(paths) == 5 and len(set(paths)) == 5, body
            assert {p.split("/")[3] for p in paths} == {"T1", "T2", "T3", "T4"}, paths
            assert all(f["diskLifetime"] == "PT3600S" for f in body["files"]), body
            # released after use: every staged file, by the request that staged it (after the
            # job's last file is copied, which may be after the last chunk was answered)
            _eventually(lambda: sum(len(r[1]) for r in emu.releases) >= 5, f"no release: {emu.calls}")
            assert emu.releases == [("req-1", emu.releases[0][1])] and sorted(emu.releases[0][1]) == sorted(paths), \
                emu.releases
            assert emu.pinned() == [], "files left pinned on the site's disk after they were cached"
            for n in names:
                loc = requests.get(f"{url}/datasets/{n}/locality", timeout=30).json()
                assert [f for f in loc["files"] if f["state"] == "online"], loc
            # the archive's word after the release: on tape only again; the bytes are ours
            info = requests.post(f"{emu.url}/api/v1/tape/archiveinfo", json={"paths": paths}, timeout=30,
                                 headers={"Authorization": "Bearer s3cret-token"}).json()
            assert {i["locality"] for i in info} == {"NEARLINE"}, info
            ds = xr.open_zarr(f"{url}/datasets/tape_esm4/zarr", consolidated=True, mask_and_scale=False,
                              decode_times=False).load()
            np.testing.assert_array_equal(ds["ta"].values, _original(archive["files"]["tape_esm4"])["ta"].values)
            # nothing more was asked of the archive to read the rest of those files
            assert len(_stage_posts(emu)) == 1, emu.calls
        finally:
            stop_server(proc)
    finally:
        emu.stop()


def test_netcdf_on_tape_is_indexed_once_staged_then_opened_from_the_index_cache(archive, tmp_path):
    """netCDF files on tape as sources (no references): the first start recalls them (one
    stage request for both files), indexes the staged copies and keeps the index; a second
    start with the same index cache opens the dataset without any recall, and its chunks are
    recalled only when read. A recall that fails, one that takes longer than
    `indexWaitSeconds` and a glob over the archive each fail their dataset with a reason."""
    from wlcg_tape_emulator import Emulator

    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    root = archive["root"]

    def arch(name: str) -> list[str]:
        return ["/" + f.relative_to(root).as_posix() for f in archive["files"][name]]

    bad = arch("tape_bad")
    emu = Emulator(root, "s3cret-token", delay=DELAY, fail=(bad[0],))
    cache = tmp_path / "index-cache"
    try:
        storage = _wlcg_storage(emu, token, tmp_path / "staging")
        datasets = [
            {"name": "nc_mri", "sources": arch("tape_mri"), "storage": storage},
            {"name": "nc_bad", "sources": bad[:1], "storage": storage},
            {"name": "nc_glob", "sources": ["/arch/proj/T1/*.nc"], "storage": storage},
            {"name": "nc_slow", "sources": arch("tape_cm4"),
             "storage": {"tape": {**storage["tape"], "indexWaitSeconds": 0}}},
        ]
        url, proc, log, status = _serve(tmp_path, "nc1", datasets, cache=cache)
        try:
            st = {d["name"]: d for d in status["datasets"]}
            assert st["nc_mri"]["state"] == "ready", st
            assert st["nc_bad"]["state"] == "failed" and bad[0] in st["nc_bad"]["error"] \
                and "tape VOL042 is disabled" in st["nc_bad"]["error"], st["nc_bad"]
            assert st["nc_glob"]["state"] == "failed" and "named in full" in st["nc_glob"]["error"], st["nc_glob"]
            assert st["nc_slow"]["state"] == "failed" and "not indexed yet" in st["nc_slow"]["error"] \
                and arch("tape_cm4")[0] in st["nc_slow"]["error"], st["nc_slow"]
            # the two MRI files were recalled in one request (with the bad file and the slow
            # dataset's: all datasets open at once and share the staging directory's queue)
            mri = [b for b in emu.stage_bodies if any("/T1/" in f["path"] for f in b["files"])]
            assert len(mri) == 1 and sorted(f["path"] for f in mri[0]["files"] if "/T1/" in f["path"]) \
                == sorted(arch("tape_mri")), emu.stage_bodies
            ds = xr.open_zarr(f"{url}/datasets/nc_mri/zarr", consolidated=True, mask_and_scale=False,
                              decode_times=False).load()
            orig = _original(archive["files"]["tape_mri"])
            np.testing.assert_array_equal(ds["ta"].values, orig["ta"].values)
            np.testing.assert_array_equal(ds["time"].values, orig["time"].values)
        finally:
            stop_server(proc)
        assert list((cache / "index").glob("*.json")), "no index kept for the files on tape"

        # second start: same index cache, empty staging directory
        before = len(emu.calls)
        storage2 = _wlcg_storage(emu, token, tmp_path / "staging2")
        url, proc, log, status = _serve(tmp_path, "nc2", [
            {"name": "nc_mri", "sources": arch("tape_mri"), "storage": storage2}], cache=cache)
        try:
            assert status["datasets"][0]["state"] == "ready", status
            for path in ["/zarr/.zmetadata", "/zarr/ta/.zarray", "/stac", ""]:
                assert requests.get(f"{url}/datasets/nc_mri{path}", timeout=30).status_code == 200, path
            assert not [c for c in emu.calls[before:] if c[0] == "POST" and c[1].endswith("/stage")], \
                emu.calls[before:]
            loc = requests.get(f"{url}/datasets/nc_mri/locality", timeout=30).json()
            assert loc["online"] == 0 and {f["state"] for f in loc["files"]} == {"nearline"}, loc
            _, (first, _) = _chunk_keys(url, "nc_mri")
            r = requests.get(f"{url}/datasets/nc_mri/zarr/ta/{first}", timeout=60)
            assert r.status_code == 503 and r.json()["file"] in arch("tape_mri"), (r.status_code, r.text)
            assert _until_ok(f"{url}/datasets/nc_mri/zarr/ta/{first}").status_code == 200
            assert len([c for c in emu.calls[before:] if c == ("POST", "/api/v1/tape/stage")]) == 1
            got = xr.open_zarr(f"{url}/datasets/nc_mri/zarr", consolidated=True, mask_and_scale=False,
                               decode_times=False)["ta"][:1].load()
            np.testing.assert_array_equal(got.values, orig["ta"].values[:1])
        finally:
            stop_server(proc)
    finally:
        emu.stop()


def test_uncached_netcdf_on_tape_opens_in_the_background_while_the_server_serves(archive, tmp_path):
    """netCDF files on tape without an index must be recalled before their dataset can open,
    which takes as long as the archive takes. The server does not wait for that: it listens
    at once, `/healthz` and the other datasets answer, the dataset on tape is listed as
    `opening`, and every request for it — Zarr keys, `.zmetadata`, kerchunk, OPeNDAP, STAC,
    intake — is 503 with Retry-After and a body naming the dataset and its state, never 404
    (a zarr client reads a 404 as fill values) and never a 2xx without data. Catalog listings
    answer at once without it. Once recalled and indexed it is ready and serves the files'
    values."""
    from wlcg_tape_emulator import Emulator

    slow = 10.0  # seconds the recall takes: the server must be serving long before
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    root = archive["root"]
    emu = Emulator(root, "s3cret-token", delay=slow)
    arch = ["/" + f.relative_to(root).as_posix() for f in archive["files"]["tape_cm4"]]
    try:
        datasets = [
            {"name": "disk", "sources": [str(f) for f in archive["files"]["tape_esm4"]]},
            {"name": "nc_cm4", "sources": arch,
             "storage": _wlcg_storage(emu, token, tmp_path / "staging")},
        ]
        cfg = _write_cfg(tmp_path / "bg.yaml", datasets)
        t0 = time.monotonic()
        url, proc, log = start_server(["serve", "--config", str(cfg)], tmp_path, "bg",
                                      extra_env={"CLOUDIFY_CACHE_DIR": str(tmp_path / "bg-cache")})
        try:
            assert time.monotonic() - t0 < slow / 2, "the server waited for the recall before listening"
            assert requests.get(f"{url}/healthz", timeout=5).text == "ok"
            st = {d["name"]: d for d in requests.get(f"{url}/status", timeout=5).json()["datasets"]}
            assert st["disk"]["state"] == "ready", st
            assert st["nc_cm4"]["state"] == "opening" and "tape" in st["nc_cm4"]["waiting_for"], st
            assert requests.get(f"{url}/datasets", timeout=5).json() == ["disk", "nc_cm4"]
            r = requests.get(f"{url}/readyz", timeout=5)
            assert r.status_code == 200 and r.json()["opening"] == 1, r.text
            assert 'cloudify_datasets{state="opening"} 1' in requests.get(f"{url}/metrics", timeout=5).text
            # the other dataset serves meanwhile, its values those of its files
            disk = xr.open_zarr(f"{url}/datasets/disk/zarr", consolidated=True, mask_and_scale=False,
                                decode_times=False)["ta"][:2].load()
            np.testing.assert_array_equal(disk.values, _original(archive["files"]["tape_esm4"])["ta"].values[:2])
            for route in ["/zarr/.zmetadata", "/zarr/zarr.json", "/zarr/ta/.zarray", "/zarr/ta/0.0.0.0",
                          "/zarr/nothing/.zarray", "/zarr/ta/c/0/0/0/0", "/kerchunk.json", "/stac",
                          "/catalog.yaml", "/locality"]:
                r = requests.get(f"{url}/datasets/nc_cm4{route}", timeout=5)
                assert r.status_code == 503, (route, r.status_code, r.text[:300])
                assert r.headers["Retry-After"] == "4", (route, r.headers)
                body = r.json()
                assert body["dataset"] == "nc_cm4" and body["state"] == "opening", (route, body)
            for route in ["/opendap.dds", "/opendap.dods", "/opendap.dmr"]:
                r = requests.get(f"{url}/datasets/nc_cm4{route}", timeout=5)
                assert r.status_code == 503 and r.headers["Retry-After"] == "4", (route, r.status_code)
                assert "still opening" in r.text, (route, r.text[:300])
            # catalogs answer at once, without the dataset they cannot describe yet
            coll = requests.get(f"{url}/stac-collection-all.json", timeout=5)
            assert coll.status_code == 200 and "nc_cm4" not in coll.text, coll.text[:500]
            assert "nc_cm4" not in requests.get(f"{url}/intake.yaml", timeout=5).text
            assert time.monotonic() - t0 < slow, "the checks above ran after the recall was done"

            st = {d["name"]: d for d in wait_until_settled(url, ["disk", "nc_cm4"], proc)["datasets"]}
            assert st["nc_cm4"]["state"] == "ready", st
            assert time.monotonic() - t0 >= slow * 0.9
            ds = xr.open_zarr(f"{url}/datasets/nc_cm4/zarr", consolidated=True, mask_and_scale=False,
                              decode_times=False).load()
            orig = _original(archive["files"]["tape_cm4"])
            np.testing.assert_array_equal(ds["ta"].values, orig["ta"].values)
            np.testing.assert_array_equal(ds["time"].values, orig["time"].values)
            assert "nc_cm4" in requests.get(f"{url}/stac-collection-all.json", timeout=30).text
            assert 'cloudify_datasets{state="ready"} 2' in requests.get(f"{url}/metrics", timeout=5).text
        finally:
            stop_server(proc)
        assert "opens in the background" in log.read_text()
    finally:
        emu.stop()


def test_register_adds_a_dataset_to_the_catalog_once_it_has_opened(archive, tmp_path):
    """`serve --register`: a dataset opening in the background (netCDF on tape without an
    index) is not registered while it opens — a catalog item would send clients to 503s for
    hours, and it cannot be described without its files — while the datasets that serve are
    registered at once; once it is ready it is registered too, without a restart."""
    from wlcg_tape_emulator import Emulator

    slow = 10.0
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    (tmp_path / "cat-token").write_text("catalog-token\n")
    root = archive["root"]
    emu = Emulator(root, "s3cret-token", delay=slow)
    arch = ["/" + f.relative_to(root).as_posix() for f in archive["files"]["tape_cm4"]]
    cat_url, cat, cat_log = start_server(["catalog", "--data", str(tmp_path / "store"),
                                          "--token-file", str(tmp_path / "cat-token")], tmp_path, "catalog")
    proc = None
    try:
        cfg = _write_cfg(tmp_path / "reg.yaml", [
            {"name": "disk", "sources": [str(f) for f in archive["files"]["tape_esm4"]]},
            {"name": "nc_cm4", "sources": arch, "storage": _wlcg_storage(emu, token, tmp_path / "staging")},
        ])
        url, proc, log = start_server(["serve", "--config", str(cfg), "--register", cat_url,
                                       "--register-token-file", str(tmp_path / "cat-token")], tmp_path, "reg",
                                      extra_env={"CLOUDIFY_CACHE_DIR": str(tmp_path / "reg-cache")})
        item = lambda n: requests.get(f"{cat_url}/collections/cloudify/items/{n}", timeout=10)  # noqa: E731
        _eventually(lambda: item("disk").status_code == 200, "the ready dataset was not registered", timeout=20)
        st = {d["name"]: d["state"] for d in requests.get(f"{url}/status", timeout=5).json()["datasets"]}
        assert st["nc_cm4"] == "opening", ("the checks below need it still opening", st)
        r = item("nc_cm4")
        assert r.status_code == 404, ("registered while opening", r.status_code, r.text[:300])
        found = requests.get(f"{cat_url}/search", params={"ids": "nc_cm4"}, timeout=10).json()
        assert found["features"] == [], found

        st = {d["name"]: d for d in wait_until_settled(url, ["disk", "nc_cm4"], proc)["datasets"]}
        assert st["nc_cm4"]["state"] == "ready", st
        # registration looks for newly ready datasets every few seconds
        _eventually(lambda: item("nc_cm4").status_code == 200,
                    f"not registered once ready: {log.read_text(errors='replace')[-2000:]}", timeout=30)
        it = item("nc_cm4").json()
        assert it["id"] == "nc_cm4" and it["assets"]["zarr-v2"]["href"] == f"{url}/datasets/nc_cm4/zarr", it
        assert "ta" in it["properties"]["cube:variables"], it["properties"].keys()
        # the registered asset serves the files' values
        ds = xr.open_zarr(it["assets"]["zarr-v2"]["href"], consolidated=True, mask_and_scale=False,
                          decode_times=False)["ta"][:1].load()
        np.testing.assert_array_equal(ds.values, _original(archive["files"]["tape_cm4"])["ta"].values[:1])
        assert item("disk").status_code == 200
    finally:
        stop_server(proc)
        stop_server(cat)
        emu.stop()


def test_a_compute_worker_reading_a_chunk_on_tape_passes_on_the_recalls_retry_after(archive, tmp_path):
    """A reduction computed on a compute worker (`serve --compute`) over files on tape: the
    worker's read of a file being recalled reaches the client as 503 with the recall's
    `Retry-After` (compute protocol version 4 carries it), naming the worker and the file —
    not a 503 without a hint of when to come back, not 404, not data. Once recalled, the
    product's values equal xarray's over the files."""
    from conftest import start_server as start

    slk = Slk(tmp_path / "slk", archive["root"], [])
    datasets = [{"name": "tape_esm4", "sources": archive["refs"]["tape_esm4"], "referenceRoots": ["/arch"],
                 "storage": _tape_storage(slk.state, tmp_path / "staging")}]
    cfg = _write_cfg(tmp_path / "tape-compute.yaml", datasets)
    env = {"CLOUDIFY_CACHE_DIR": str(tmp_path / "cache")}
    wurl, wproc, wlog = start(["worker", "--config", str(cfg), "--threads", "1"], tmp_path, "worker", extra_env=env)
    try:
        url, proc, log = start(["serve", "--config", str(cfg), "--compute", wurl, "--compute-timeout", "20",
                                "--compute-cache-bytes", "0"], tmp_path, "front", extra_env=env)
        try:
            wait_until_settled(url, ["tape_esm4"], proc)
            base = f"{url}/datasets/tape_esm4/groupby/ta/time.month/mean/zarr"
            meta = requests.get(f"{base}/ta/.zarray", timeout=30)
            assert meta.status_code == 200, meta.text[:300]
            key = ".".join("0" for _ in meta.json()["shape"])
            r = requests.get(f"{base}/ta/{key}", timeout=60)
            assert r.status_code == 503, (r.status_code, r.text[:500])
            assert 1 <= int(r.headers["Retry-After"]) <= 5, r.headers
            err = r.json()["error"]
            assert "compute worker" in err and wurl in err and "/arch/proj/T2/" in err, err
            assert slk.recalls_of("/T2/"), "the worker did not recall the file"
            r = _until_ok(f"{base}/ta/{key}", timeout=60)
            assert r.status_code == 200, r.text[:300]
            got = xr.open_zarr(base, consolidated=True)["ta"].load()
            files = [str(f) for f in archive["files"]["tape_esm4"]]
            with xr.open_mfdataset(files, combine="by_coords", data_vars="minimal", coords="minimal",
                                   compat="override") as ds:
                want = ds["ta"].groupby("time.month").mean().load()
            np.testing.assert_allclose(got.values, want.values, rtol=1e-5, equal_nan=True)
        finally:
            stop_server(proc)
    finally:
        stop_server(wproc)
    assert "panicked" not in wlog.read_text(errors="replace")

#!/usr/bin/env python3
"""Two builds of cloudify side by side: does a change make serving slower?

    compare.py --before BIN --after BIN [--years 1] [--connections 8] [--repeats 5]
               [--workdir /var/tmp/cloudify-bench]

Refactors (the layering issue) must not cost speed. One run starts both binaries on the same
files and measures, in alternating order, full passes over every chunk of ``tas`` on:

- ``passthrough-v2`` / ``passthrough-v3``: the benchmark dataset (make_data.py; zlib+shuffle
  chunks that tile the served grid) — stored bytes sent unchanged (v3 behind a Blosc header);
- ``transcode-v2`` / ``transcode-v3``: a copy of the same values written with Fletcher-32 in
  front of shuffle+zlib (netCDF-C's order), which no Zarr codec declares — every chunk is
  read, checksummed, inflated, unshuffled and re-encoded (Blosc zstd).

Prints chunks/s per build (median of REPEATS passes) and the ratio after/before, and one JSON
line. Before timing, every target's chunks are compared byte for byte between the two builds
and their metadata documents compared parsed (same data in, same answers out): a refactor
must not change what is served.
Exit status: 0 ok; 1 a server failed or the builds served different bytes; 2 set-up failed.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (servers, load client)
from run import VAR, Server, SetupError, log, median, wait_ready  # noqa: E402


def transcode_copy(src_files, outdir, python):
    """The benchmark files rewritten with fletcher32 (written once, reused)."""
    os.makedirs(outdir, exist_ok=True)
    out = []
    for f in src_files:
        dst = os.path.join(outdir, os.path.basename(f))
        out.append(dst)
        if os.path.exists(dst):
            continue
        code = (
            "import sys, netCDF4\n"
            "src, dst = sys.argv[1], sys.argv[2]\n"
            "with netCDF4.Dataset(src) as a, netCDF4.Dataset(dst + '.tmp', 'w') as b:\n"
            "    b.setncatts({k: a.getncattr(k) for k in a.ncattrs()})\n"
            "    for n, d in a.dimensions.items():\n"
            "        b.createDimension(n, None if d.isunlimited() else len(d))\n"
            "    for n, v in a.variables.items():\n"
            "        fill = v.getncattr('_FillValue') if '_FillValue' in v.ncattrs() else None\n"
            "        kw = dict(zlib=True, shuffle=True, fletcher32=True, complevel=1, chunksizes=v.chunking()) "
            "if n == 'tas' else {}\n"
            "        w = b.createVariable(n, v.dtype, v.dimensions, fill_value=fill, **kw)\n"
            "        w.setncatts({k: v.getncattr(k) for k in v.ncattrs() if k != '_FillValue'})\n"
            "        v.set_auto_maskandscale(False); w.set_auto_maskandscale(False)\n"
            "        w[...] = v[...]\n"
            "import os; os.replace(dst + '.tmp', dst)\n"
        )
        log(f"writing {dst} (fletcher32 + shuffle + zlib)")
        subprocess.run([python, "-c", code, f, dst], check=True)
    return out


def start(name, binary, dataset, pattern, workdir, timeout):
    lf = os.path.join(workdir, f"{name}.listen")
    if os.path.exists(lf):
        os.remove(lf)
    s = Server(name, [binary, "serve", dataset, pattern, "--host", "127.0.0.1", "--port-range", "19600-19699",
                      "--listen-file", lf, "--no-cache"], os.path.join(workdir, "logs"))
    s.start()
    run.DATASET = dataset  # wait_ready builds the Zarr URL from it
    wait_ready(s, ["/zarr.json", "/.zmetadata"], timeout, lf)
    return s


def chunk_bytes(zarr, fmt, key):
    url = f"{zarr}/{VAR}/{'c/' + key.replace('.', '/') if fmt == 3 else key}"
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def same_bytes(a, b, fmt, keys):
    for k in keys:
        if chunk_bytes(a, fmt, k) != chunk_bytes(b, fmt, k):
            return k
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--years", type=int, default=1)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--client", choices=["python", "wrk", "oha"], default="python")
    ap.add_argument("--request-timeout", type=float, default=120)
    ap.add_argument("--fetch-timeout", type=float, default=1800)
    ap.add_argument("--wrk-duration", type=int, default=10)
    ap.add_argument("--wrk-threads", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(os.path.join(a.workdir, "logs"), exist_ok=True)
    servers = []
    try:
        pattern, files = run.ensure_data(a, a.python)
        tc_dir = os.path.join(a.workdir, f"transcode-{a.years}y")
        tc_files = transcode_copy(files, tc_dir, a.python)
        tc_pattern = os.path.join(tc_dir, os.path.basename(pattern))
        client = run.Client(a, a.workdir)
        targets = []
        for label, binary in (("before", a.before), ("after", a.after)):
            for ds, pat in (("passthrough", pattern), ("transcode", tc_pattern)):
                s = start(f"{label}-{ds}", binary, ds, pat, a.workdir, 300)
                servers.append(s)
                for fmt in (2, 3):
                    targets.append({"name": f"{label}-{ds}-v{fmt}", "zarr": s.zarr, "fmt": fmt, "label": label,
                                    "case": f"{ds}-v{fmt}", "server": s})
        assert len(glob.glob(tc_pattern)) == len(tc_files)
        # same bytes from both builds (first, middle and last chunks of each case)
        n = 365 * a.years
        keys = [f"{i}.0.0" for i in sorted({0, 1, n // 2, n - 1})]
        for case in sorted({t["case"] for t in targets}):
            before = next(t for t in targets if t["case"] == case and t["label"] == "before")
            after = next(t for t in targets if t["case"] == case and t["label"] == "after")
            bad = same_bytes(before["zarr"], after["zarr"], before["fmt"], keys)
            if bad is not None:
                log(f"{case}: chunk {bad} differs between the builds")
                return 1
            # metadata: the same documents (compared parsed: formatting may differ)
            for doc in ([".zmetadata"] if before["fmt"] == 2 else ["zarr.json", f"{VAR}/zarr.json"]):
                docs = [json.loads(urllib.request.urlopen(f"{t['zarr']}/{doc}", timeout=60).read())
                        for t in (before, after)]
                if docs[0] != docs[1]:
                    log(f"{case}: {doc} differs between the builds")
                    return 1
        log("both builds serve the same bytes and metadata")
        for t in targets:  # warm-up
            client.fetch(t)
        results = {t["name"]: [] for t in targets}
        for r in range(a.repeats):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for t in order:
                out = client.fetch(t)
                if out.get("errors"):
                    log(f"{t['name']}: {out['errors']} errors")
                    return 1
                results[t["name"]].append(out["chunks_per_s"])
        summary = {}
        print(f"{'case':<18} {'before':>10} {'after':>10} {'after/before':>13}")
        for case in sorted({t["case"] for t in targets}):
            b = median(results[f"before-{case}"])
            af = median(results[f"after-{case}"])
            summary[case] = {"before_chunks_per_s": b, "after_chunks_per_s": af, "ratio": round(af / b, 3)}
            print(f"{case:<18} {b:>10.1f} {af:>10.1f} {af / b:>13.3f}")
        print("JSON " + json.dumps({"repeats": a.repeats, "connections": a.connections, "cases": summary,
                                    "samples": results}))
        return 0
    except SetupError as e:
        log(f"set-up failed: {e}")
        return 2
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Load client: fetch every chunk of one variable from a Zarr-over-HTTP endpoint.

    fetch.py ZARR_URL VAR [CONNECTIONS] [--zarr-format auto|2|3] [--max-chunks N]
                                        [--timeout S] [--list-urls FILE]

ZARR_URL is the Zarr root (e.g. http://127.0.0.1:19500/datasets/bench/zarr). The chunk layout is
read from ``VAR/zarr.json`` (Zarr v3; chunk_key_encoding "default" -> ``VAR/c/0/0/0``, "v2" ->
``VAR/0.0.0``) or, for v2, from ``.zmetadata`` (falling back to ``VAR/.zarray``; keys ``VAR/0.0.0``
with the array's ``dimension_separator``). ``--zarr-format`` forces one of the two when a server
speaks both on the same prefix (``auto`` tries v3 first).

Every chunk key is requested exactly once by CONNECTIONS (default 8) concurrent workers that share
one keep-alive connection pool of that size (aiohttp). The timed window runs from the first chunk
request to the last response body read; the metadata requests are not timed. Bodies are counted
as received on the wire (``Accept-Encoding: identity``, no decompression).

Prints exactly one JSON line on stdout:
    {"chunks", "errors", "seconds", "chunks_per_s", "MB_per_s", "MB", "p50_ms", "p99_ms", ...}
where an error is any response other than 200 or any failed request (connection reset, timeout);
with errors the line also has "error_kinds" ({"404": 3, "ClientOSError": 1}) and the first failing
URL and body excerpt go to stderr. Exit status: 0 if all chunks were fetched with 200, 1 if any
failed, 2 if the layout could not be read.

``--list-urls FILE`` only writes every chunk URL to FILE (one a line, for oha/wrk) and prints the
layout as JSON. Needs aiohttp.
"""
import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import Counter

import aiohttp

HEADERS = {"Accept-Encoding": "identity"}


class LayoutError(Exception):
    pass


async def _get_json(session, url):
    async with session.get(url, headers=HEADERS) as r:
        body = await r.read()
        if r.status != 200:
            return r.status, None
        try:
            return r.status, json.loads(body)
        except ValueError as e:
            raise LayoutError(f"{url}: invalid JSON ({e})") from e


async def _layout_v3(session, base, var):
    status, meta = await _get_json(session, f"{base}/{var}/zarr.json")
    if meta is None:
        return None, f"{base}/{var}/zarr.json -> HTTP {status}"
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise LayoutError(f"{base}/{var}/zarr.json is not a Zarr v3 array")
    grid = meta["chunk_grid"]
    if grid.get("name") != "regular":
        raise LayoutError(f"unsupported chunk grid {grid.get('name')!r}")
    chunks = grid["configuration"]["chunk_shape"]
    enc = meta.get("chunk_key_encoding", {"name": "default"})
    if enc["name"] == "default":
        sep = enc.get("configuration", {}).get("separator", "/")
        prefix = "c" + sep
    elif enc["name"] == "v2":
        sep = enc.get("configuration", {}).get("separator", ".")
        prefix = ""
    else:
        raise LayoutError(f"unsupported chunk_key_encoding {enc['name']!r}")
    if not meta["shape"]:  # scalar: one chunk, key "c" (default) or "0" (v2)
        return {"zarr_format": 3, "shape": [], "chunks": [], "keys": ["c" if enc["name"] == "default" else "0"]}, None
    return {"zarr_format": 3, "shape": meta["shape"], "chunks": chunks, "sep": sep, "prefix": prefix}, None


async def _layout_v2(session, base, var):
    status, zmeta = await _get_json(session, f"{base}/.zmetadata")
    za = None
    if zmeta is not None:
        za = zmeta.get("metadata", {}).get(f"{var}/.zarray")
    if za is None:
        status2, za = await _get_json(session, f"{base}/{var}/.zarray")
        if za is None:
            return None, f"{base}/.zmetadata -> HTTP {status}, {base}/{var}/.zarray -> HTTP {status2}"
    if za.get("zarr_format") != 2:
        raise LayoutError(f"{var}/.zarray is not Zarr v2")
    if not za["shape"]:
        return {"zarr_format": 2, "shape": [], "chunks": [], "keys": ["0"]}, None
    return {"zarr_format": 2, "shape": za["shape"], "chunks": za["chunks"],
            "sep": za.get("dimension_separator") or ".", "prefix": ""}, None


async def discover(session, base, var, zarr_format="auto"):
    """Return the chunk layout of VAR: zarr_format, shape, chunks and the list of chunk keys."""
    tried = []
    order = {"auto": (3, 2), "3": (3,), "2": (2,)}[str(zarr_format)]
    for fmt in order:
        lay, why = await (_layout_v3 if fmt == 3 else _layout_v2)(session, base, var)
        if lay is not None:
            if "keys" not in lay:
                grid = [range(-(-n // c)) for n, c in zip(lay["shape"], lay["chunks"])]
                lay["keys"] = [lay["prefix"] + lay["sep"].join(map(str, idx)) for idx in itertools.product(*grid)]
            return lay
        tried.append(why)
    raise LayoutError("no Zarr metadata for %r: %s" % (var, "; ".join(tried)))


async def run(base, var, conns, zarr_format, max_chunks, timeout, list_urls):
    connector = aiohttp.TCPConnector(limit=conns, limit_per_host=conns, force_close=False)
    tmo = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=tmo, auto_decompress=False) as session:
        lay = await discover(session, base, var, zarr_format)
        keys = lay["keys"][:max_chunks] if max_chunks else lay["keys"]
        urls = [f"{base}/{var}/{k}" for k in keys]
        if list_urls:
            with open(list_urls, "w") as f:
                f.write("\n".join(urls) + "\n")
            return {"zarr_format": lay["zarr_format"], "shape": lay["shape"], "chunks_shape": lay["chunks"],
                    "chunks": len(urls), "urls_file": list_urls}, 0

        it = iter(urls)
        nbytes = 0
        errors = Counter()
        latencies = []
        first_error = []

        async def worker():
            nonlocal nbytes
            for url in it:  # the iterator is shared: each URL is taken by exactly one worker
                t = time.perf_counter()
                try:
                    async with session.get(url, headers=HEADERS) as r:
                        body = await r.read()
                        nbytes += len(body)
                        if r.status != 200:
                            errors[str(r.status)] += 1
                            if not first_error:
                                first_error.append(f"{url} -> HTTP {r.status}: {body[:300]!r}")
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                    errors[type(e).__name__] += 1
                    if not first_error:
                        first_error.append(f"{url} -> {type(e).__name__}: {e}")
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(min(conns, len(urls)) or 1)])
        dt = time.perf_counter() - t0

    latencies.sort()

    def pct(p):
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 2) if latencies else None

    n_err = sum(errors.values())
    out = {"chunks": len(urls), "errors": n_err, "seconds": round(dt, 3),
           "chunks_per_s": round(len(urls) / dt, 1) if dt > 0 else None,
           "MB_per_s": round(nbytes / dt / 1e6, 1) if dt > 0 else None,
           "MB": round(nbytes / 1e6, 1), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
           "connections": conns, "zarr_format": lay["zarr_format"], "client": "python-aiohttp"}
    if n_err:
        out["error_kinds"] = dict(errors)
        print("fetch.py: first error: " + first_error[0], file=sys.stderr)
    return out, 1 if n_err else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("zarr_url")
    ap.add_argument("var")
    ap.add_argument("connections", nargs="?", type=int, default=8)
    ap.add_argument("--zarr-format", choices=["auto", "2", "3"], default="auto")
    ap.add_argument("--max-chunks", type=int, default=0, help="fetch only the first N chunks (0: all)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for one request")
    ap.add_argument("--list-urls", metavar="FILE", help="write the chunk URLs to FILE and exit")
    ap.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                    help="send this header with every request (repeatable), e.g. an Authorization")
    a = ap.parse_args()
    if a.connections < 1:
        ap.error("CONNECTIONS must be >= 1")
    for h in a.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            ap.error(f"--header {h!r}: expected 'NAME: VALUE'")
        HEADERS[name.strip()] = value.strip()
    try:
        out, rc = asyncio.run(run(a.zarr_url.rstrip("/"), a.var, a.connections, a.zarr_format,
                                  a.max_chunks, a.timeout, a.list_urls))
    except (LayoutError, aiohttp.ClientError, OSError, KeyError, asyncio.TimeoutError) as e:
        print(f"fetch.py: cannot read the chunk layout: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())

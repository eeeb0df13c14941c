"""A WLCG Tape REST API emulator for the tape tests (test_tape.py).

Serves ``/api/v1/tape/{stage,stage/ID,release/ID,archiveinfo}`` and a data door
(``/data/<archive path>``) over files below ``archive``, on a free loopback port, in a thread
of the test process. A stage request's files become ``COMPLETED`` (online) ``delay`` seconds
after it was made, or ``FAILED`` for paths in ``fail``; reading a file that is not online is
refused (409), as a tape system's disk door does. Every request must carry
``Authorization: Bearer <token>``; every call is logged in ``calls``, every stage request's
body in ``stage_bodies`` and every release in ``releases``.

Pins: a staged file stays on disk (``ONLINE_AND_NEARLINE`` in ``archiveinfo``, readable at the
data door) until its request releases it (``POST /release/ID`` naming it) or its
``diskLifetime`` (ISO 8601 ``PT<n>S``, per file in the stage request) runs out; without a
lifetime, until released. ``pinned()`` lists what is held.
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Emulator:
    def __init__(self, archive: Path, token: str, delay: float = 1.0, fail: tuple[str, ...] = (), port: int = 0):
        self.archive, self.token, self.delay, self.fail = archive, token, delay, set(fail)
        self.requests: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.stage_bodies: list[dict] = []
        self.releases: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()
        emu = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _json(self, code: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _auth(self) -> bool:
                with emu.lock:
                    emu.calls.append((self.command, self.path))
                if self.headers.get("Authorization") != f"Bearer {emu.token}":
                    self._json(401, {"title": "missing or wrong bearer token"})
                    return False
                return True

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"null")

            def do_POST(self):  # noqa: N802
                if not self._auth():
                    return
                body = self._body()
                if self.path == "/api/v1/tape/stage":
                    files = body.get("files") if isinstance(body, dict) else None
                    if not files or not all(isinstance(f, dict) and "path" in f for f in files):
                        return self._json(400, {"title": "files: a list of {path} objects is required"})
                    lifetimes = {}
                    for f in files:
                        lt = f.get("diskLifetime")
                        if lt is not None:
                            m = re.fullmatch(r"PT(\d+)S", lt)
                            if not m:
                                return self._json(400, {"title": f"diskLifetime {lt!r} is not PT<n>S"})
                            lifetimes[f["path"]] = int(m.group(1))
                    with emu.lock:
                        emu.stage_bodies.append(body)
                        rid = f"req-{len(emu.requests) + 1}"
                        emu.requests[rid] = {"t": time.time(), "paths": [f["path"] for f in files],
                                             "lifetime": lifetimes, "released": set()}
                    self._json(201, {"requestId": rid})
                elif self.path == "/api/v1/tape/archiveinfo":
                    self._json(200, [{"path": p, "locality": emu.locality(p)} for p in body["paths"]])
                elif self.path.startswith("/api/v1/tape/release/"):
                    rid = self.path.rsplit("/", 1)[1]
                    with emu.lock:
                        r = emu.requests.get(rid)
                        if r is None:
                            return self._json(404, {"title": f"no request {rid}"})
                        unknown = [p for p in body["paths"] if p not in r["paths"]]
                        if unknown:
                            return self._json(400, {"title": f"not in request {rid}: {unknown}"})
                        r["released"].update(body["paths"])
                        emu.releases.append((rid, list(body["paths"])))
                    self._json(200, None)
                else:
                    self._json(404, {"title": "no such endpoint"})

            def do_DELETE(self):  # noqa: N802
                if self._auth():
                    self._json(200, None)

            def do_GET(self):  # noqa: N802
                if not self._auth():
                    return
                if self.path.startswith("/api/v1/tape/stage/"):
                    rid = self.path.rsplit("/", 1)[1]
                    r = emu.requests.get(rid)
                    if r is None:
                        return self._json(404, {"title": f"no request {rid}"})
                    done = time.time() - r["t"] >= emu.delay
                    files = []
                    for p in r["paths"]:
                        if not done:
                            files.append({"path": p, "state": "STARTED"})
                        elif p in emu.fail:
                            files.append({"path": p, "state": "FAILED", "error": "tape VOL042 is disabled"})
                        else:
                            files.append({"path": p, "state": "COMPLETED", "onDisk": True})
                    return self._json(200, {"id": rid, "files": files})
                if self.path.startswith("/data/"):
                    p = self.path[len("/data"):]
                    if emu.locality(p) not in ("ONLINE", "ONLINE_AND_NEARLINE"):
                        return self._json(409, {"title": f"{p} is not online"})
                    data = (emu.archive / p.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self._json(404, {"title": "no such endpoint"})

        # port: a restart on the port of a stopped emulator (the archive coming back)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _pinned_by(self, r: dict, path: str, now: float) -> bool:
        """Whether request ``r`` holds ``path`` on disk now."""
        if path not in r["paths"] or path in self.fail or path in r["released"]:
            return False
        staged = r["t"] + self.delay
        lifetime = r["lifetime"].get(path)
        return now >= staged and (lifetime is None or now < staged + lifetime)

    def locality(self, path: str) -> str:
        now = time.time()
        with self.lock:
            if any(self._pinned_by(r, path, now) for r in self.requests.values()):
                return "ONLINE_AND_NEARLINE"
        return "NEARLINE"

    def pinned(self) -> list[str]:
        """Paths some request holds on disk now."""
        now = time.time()
        with self.lock:
            return sorted({p for r in self.requests.values() for p in r["paths"] if self._pinned_by(r, p, now)})

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

"""Connection and process lifecycle of `cloudify serve`, with real sockets and real processes:
header and idle timeouts, the connection limit, a low file-descriptor limit, a server whose only
dataset cannot be read, SIGTERM draining under load, HTTP/2 in cleartext and over TLS."""
from __future__ import annotations

import http.client
import os
import re
import selectors
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import requests
import urllib3

from conftest import find_binary, start_server, stop_server


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _nc(path: Path, nt: int = 200, nx: int = 1000) -> Path:
    """netCDF-4 file with a chunked variable `tas` (one chunk per time step)."""
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("x", nx)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = np.arange(nt)
        v = ds.createVariable("tas", "f4", ("time", "x"), zlib=True, chunksizes=(1, nx))
        v[:] = np.random.default_rng(0).random((nt, nx), dtype=np.float32)
    return path


def _log(path: Path) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(errors="replace"))


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def _serve(tmp_path: Path, tag: str, *flags: str, files: list[Path] | None = None, env: dict | None = None):
    files = files or [_nc(tmp_path / f"{tag}.nc")]
    return start_server(["serve", "lc", *map(str, files), *flags], tmp_path, tag, extra_env=env)


def _closed_within(socks: list[socket.socket], timeout: float) -> dict[socket.socket, float]:
    """Waits until the server closes each socket (EOF or reset); returns when each closed."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed: dict[socket.socket, float] = {}
    deadline = time.monotonic() + timeout
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                data = b""
            except BlockingIOError:
                continue
            if data == b"":
                closed[s] = time.monotonic()
                sel.unregister(s)
    sel.close()
    return closed


def _get_ok(url: str, path: str = "/healthz", timeout: float = 10) -> None:
    r = requests.get(url + path, timeout=timeout)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------
# defect 5: timeouts and the connection limit
# ---------------------------------------------------------------------------
def test_slowloris_and_silent_connections_are_closed_after_the_header_timeout(tmp_path):
    url, proc, log = _serve(tmp_path, "slow", "--header-timeout", "1", "--idle-timeout", "30")
    host, port = _host_port(url)
    try:
        t0 = time.monotonic()
        slow = [socket.create_connection((host, port)) for _ in range(300)]
        silent = [socket.create_connection((host, port)) for _ in range(50)]
        for s in slow:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        # trickle further header lines, as slowloris does, while the server must still serve
        stop = threading.Event()

        def trickle():
            i = 0
            while not stop.is_set():
                for s in slow:
                    try:
                        s.send(f"X-{i}: y\r\n".encode())
                    except OSError:
                        pass
                i += 1
                stop.wait(0.2)

        th = threading.Thread(target=trickle, daemon=True)
        th.start()
        _get_ok(url)  # a normal client is served meanwhile
        closed = _closed_within(slow + silent, timeout=8)
        stop.set()
        th.join()
        assert len(closed) == 350, f"{350 - len(closed)} of 350 connections still open after 8 s"
        first, last = min(closed.values()) - t0, max(closed.values()) - t0
        assert first >= 0.9, f"closed after {first:.2f} s, before the 1 s header timeout"
        assert last < 4, f"last closed after {last:.2f} s"
        _get_ok(url)
        for s in slow + silent:
            s.close()
    finally:
        stop_server(proc)
    assert proc.returncode == 0, _log(log)[-3000:]


def test_idle_keepalive_connection_is_closed_after_the_idle_timeout(tmp_path):
    # the header timeout is longer: the idle timeout alone closes the connection
    url, proc, log = _serve(tmp_path, "idle", "--header-timeout", "5", "--idle-timeout", "1.5")
    host, port = _host_port(url)
    try:
        c = http.client.HTTPConnection(host, port, timeout=10)
        c.request("GET", "/healthz")
        r = c.getresponse()
        assert r.status == 200 and r.read() == b"ok"
        time.sleep(1.0)  # reused within the idle timeout: still open, served
        c.request("GET", "/healthz")
        r = c.getresponse()
        assert r.status == 200 and r.read() == b"ok"
        served = time.monotonic()
        closed = _closed_within([c.sock], timeout=6)
        assert closed, "idle keep-alive connection still open after 6 s"
        after = closed[c.sock] - served
        assert 1.3 <= after <= 3.0, f"closed {after:.2f} s after the last response (idle timeout 1.5 s)"
    finally:
        stop_server(proc)
    assert proc.returncode == 0, _log(log)[-3000:]


def test_slow_download_is_not_cut_by_the_timeouts(tmp_path):
    """A client reading a 16 MB chunk for several times the header and idle timeouts gets all of it."""
    f = tmp_path / "big.nc"
    with netCDF4.Dataset(f, "w") as ds:
        ds.createDimension("t", 2)
        ds.createDimension("x", 4_000_000)
        v = ds.createVariable("big", "f4", ("t", "x"), chunksizes=(1, 4_000_000))
        v[:] = np.random.default_rng(1).random((2, 4_000_000), dtype=np.float32)
    url, proc, log = _serve(tmp_path, "dl", "--header-timeout", "0.5", "--idle-timeout", "0.5", files=[f])
    host, port = _host_port(url)
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.connect((host, port))
        s.sendall(b"GET /datasets/lc/kerchunk/big/0.0 HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, body = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
        assert length >= 16_000_000
        got = len(body)
        while got < length:
            chunk = s.recv(65536)
            assert chunk, f"connection closed after {got} of {length} bytes, {time.monotonic() - t0:.1f} s"
            got += len(chunk)
            time.sleep(0.01)
        took = time.monotonic() - t0
        assert took > 1.5, f"download took only {took:.2f} s: not slow enough to test the timeouts"
        s.close()
    finally:
        stop_server(proc)
    assert proc.returncode == 0, _log(log)[-3000:]


def test_connection_limit_makes_clients_wait_and_logs_it(tmp_path):
    url, proc, log = _serve(tmp_path, "limit", "--max-connections", "4", "--header-timeout", "30")
    host, port = _host_port(url)
    try:
        hogs = [socket.create_connection((host, port)) for _ in range(4)]
        time.sleep(0.3)
        result = {}

        def client():
            t = time.monotonic()
            try:
                r = requests.get(url + "/healthz", timeout=15)
                result["status"] = r.status_code
            except Exception as e:  # noqa: BLE001 - reported below
                result["error"] = repr(e)
            result["took"] = time.monotonic() - t

        th = threading.Thread(target=client)
        th.start()
        time.sleep(1.5)
        assert th.is_alive(), f"answered although all 4 connections were taken: {result}"
        text = _log(log)
        assert "connection limit reached" in text and "--max-connections" in text, text[-2000:]
        assert text.count("connection limit reached") == 1, "the warning must not repeat per connection"
        hogs.pop().close()  # a slot frees up: the waiting client is served
        th.join(timeout=10)
        assert result.get("status") == 200, result
        assert result["took"] >= 1.4, result
        assert "accepting connections again" in _log(log)
        for s in hogs:
            s.close()
        _get_ok(url)
    finally:
        stop_server(proc)
    assert proc.returncode == 0, _log(log)[-3000:]


@pytest.fixture
def fd_limited_binary(tmp_path, monkeypatch):
    """`cloudify` started with `ulimit -n 64`."""
    wrapper = tmp_path / "cloudify-ulimit64"
    wrapper.write_text(f"#!/bin/sh\nulimit -n 64 || exit 99\nexec {find_binary()} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("CLOUDIFY_BIN", str(wrapper))
    return wrapper


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_low_fd_limit_default_connection_limit(tmp_path, fd_limited_binary):
    """With `ulimit -n 64` the default limit (32) is reached before the descriptors run out:
    clients wait, the log says so, and the server serves again once connections close."""
    url, proc, log = _serve(tmp_path, "fd64", "--header-timeout", "30")
    host, port = _host_port(url)
    try:
        assert "max_connections=32" in _log(log), _log(log)[-2000:]
        hogs = [socket.create_connection((host, port)) for _ in range(40)]
        time.sleep(1)
        assert "connection limit reached" in _log(log)
        for s in hogs:
            s.close()
        _get_ok(url, timeout=10)
        _get_ok(url, "/datasets/lc/zarr/tas/3.0")
    finally:
        stop_server(proc)
    assert proc.returncode == 0, _log(log)[-3000:]


def test_low_fd_limit_accept_errors_are_logged_and_backed_off(tmp_path, fd_limited_binary):
    """A limit above what `ulimit -n 64` allows: accept fails with EMFILE. The server logs it
    (once per 10 s, not per attempt), backs off instead of spinning, and recovers."""
    url, proc, log = _serve(tmp_path, "emfile", "--max-connections", "500", "--header-timeout", "30")
    host, port = _host_port(url)
    try:
        hogs = [socket.create_connection((host, port)) for _ in range(90)]
        time.sleep(0.5)
        cpu0 = _cpu_seconds(proc.pid)
        time.sleep(2)
        cpu = _cpu_seconds(proc.pid) - cpu0
        text = _log(log)
        assert "cannot accept connections" in text and "Too many open files" in text, text[-2000:]
        assert text.count("cannot accept connections") == 1, text[-2000:]
        assert cpu < 0.5, f"server used {cpu:.2f} s CPU in 2 s while out of descriptors: spinning"
        for s in hogs:
            s.close()
        _get_ok(url, timeout=10)
        _get_ok(url, "/datasets/lc/zarr/tas/3.0")
        assert proc.poll() is None
    finally:
        stop_server(proc)
    assert proc.returncode == 0, _log(log)[-3000:]


def test_help_documents_the_flags_and_defaults():
    out = subprocess.run([find_binary(), "serve", "--help"], capture_output=True, text=True, timeout=30).stdout
    for flag, default in [("--header-timeout", "20"), ("--idle-timeout", "75"), ("--drain-period", "5"),
                          ("--shutdown-timeout", "10")]:
        assert re.search(rf"{flag} <SECS>.*?\[default: {default}\]", out, re.S), (flag, out)
    assert "--max-connections <N>" in out and "ulimit -n" in out


# ---------------------------------------------------------------------------
# defect 8: the only dataset cannot be read
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["cli", "config"])
def test_only_dataset_truncated_keeps_serving_status(tmp_path, form):
    full = _nc(tmp_path / "whole.nc")
    data = full.read_bytes()
    bad = tmp_path / "lifecycle" / "tas_2000.nc"
    bad.parent.mkdir()
    bad.write_bytes(data[: len(data) // 2])
    full.unlink()
    if form == "cli":
        args = ["serve", "lifecycle", str(bad.parent / "*.nc")]
    else:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"datasets:\n  - name: lifecycle\n    sources: [\"{bad.parent}/*.nc\"]\n")
        args = ["serve", "--config", str(cfg)]
    url, proc, log = start_server(args, tmp_path, form)
    try:
        want = f"truncated: file is {len(data) // 2} bytes, HDF5 expects {len(data)}"
        st = requests.get(url + "/status", timeout=10).json()["datasets"]
        assert len(st) == 1 and st[0]["name"] == "lifecycle" and st[0]["state"] == "failed", st
        assert want in st[0]["error"] and str(bad) in st[0]["error"], st
        r = requests.get(url + "/readyz", timeout=10)
        assert r.status_code == 503, r.text
        assert r.json()["ready"] == 0 and r.json()["failed"] == 1
        assert want in r.json()["reason"] and "lifecycle" in r.json()["reason"], r.json()
        r = requests.get(url + "/healthz", timeout=10)
        assert r.status_code == 200 and r.text == "ok"
        for route in ["/zarr/.zmetadata", "/zarr/zarr.json", "/zarr/tas/0.0", "/kerchunk.json"]:
            r = requests.get(f"{url}/datasets/lifecycle{route}", timeout=10)
            assert r.status_code == 503, (route, r.status_code)
            assert want in r.json()["error"], (route, r.json())
        time.sleep(0.5)
        assert proc.poll() is None, "the server exited"
        assert want in _log(log)
    finally:
        stop_server(proc)
    assert proc.returncode == 0, _log(log)[-3000:]


def test_only_dataset_missing_still_exits():
    """A source that does not exist is a mistake in the command: it still fails at once."""
    r = subprocess.run([find_binary(), "serve", "x", "/no/such/file.nc", "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "/no/such/file.nc" in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# defect 9: SIGTERM drain under load; HTTP/2
# ---------------------------------------------------------------------------
def _refused_before_sending(e: Exception) -> bool:
    """The connection attempt was refused (the listener is closed): nothing was sent, so a
    client may retry it anywhere. Everything else after sending a request is a failure."""
    if isinstance(e, requests.exceptions.ConnectionError) and e.args:
        inner = e.args[0]
        reason = getattr(inner, "reason", inner)
        return isinstance(reason, urllib3.exceptions.NewConnectionError) and (
            "Connection refused" in str(reason) or "Errno 111" in str(reason))
    return False


def test_sigterm_drains_keepalive_clients_without_failed_requests(tmp_path):
    """8 keep-alive clients read chunks in a loop; SIGTERM arrives under load.

    Asserted: every request that was sent got a complete 200 answer (no "server
    disconnected", reset or short body); a request may only be refused before it is sent
    (connection refused: the listener is closed), which clients retry elsewhere; responses
    during the drain say `Connection: close`; /readyz answers 503 "shutting down" on an open
    connection; the process exits 0, before the shutdown timeout."""
    url, proc, log = _serve(tmp_path, "drain", "--drain-period", "3", "--shutdown-timeout", "8")
    host, port = _host_port(url)
    nchunks = 200
    stop = threading.Event()
    term_at: list[float] = []
    lock = threading.Lock()
    stats = {"ok": 0, "ok_after_term": 0, "close_hdr": 0, "refused": 0}
    failures: list[str] = []

    probe = http.client.HTTPConnection(host, port, timeout=10)
    probe.request("GET", "/readyz")
    pr = probe.getresponse()
    assert pr.status == 200, pr.read()
    pr.read()

    def client(k: int):
        s = requests.Session()
        i = k
        while not stop.is_set():
            key = f"tas/{i % nchunks}.0"
            i += 7
            try:
                r = s.get(f"{url}/datasets/lc/zarr/{key}", timeout=20)
            except Exception as e:  # noqa: BLE001 - classified below
                if _refused_before_sending(e):
                    with lock:
                        stats["refused"] += 1
                    return  # the server is gone: this client would go elsewhere
                with lock:
                    failures.append(f"client {k} {key}: {e!r}")
                return
            with lock:
                if r.status_code != 200 or not r.content or len(r.content) != int(r.headers["content-length"]):
                    failures.append(f"client {k} {key}: {r.status_code} {len(r.content)} bytes")
                    return
                stats["ok"] += 1
                if term_at:
                    stats["ok_after_term"] += 1
                if r.headers.get("connection", "").lower() == "close":
                    stats["close_hdr"] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        assert not failures, failures
        term_at.append(time.monotonic())
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        probe.request("GET", "/readyz")
        pr = probe.getresponse()
        body = pr.read()
        assert pr.status == 503 and b"shutting down" in body, (pr.status, body)
        assert pr.getheader("connection", "").lower() == "close"
        rc = proc.wait(timeout=15)
        took = time.monotonic() - term_at[0]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        stop_server(proc)
    print(f"drain: {stats}, exit {took:.2f} s after SIGTERM")
    assert not failures, failures[:10]
    assert rc == 0, _log(log)[-3000:]
    assert stats["ok"] > 100, stats
    assert stats["close_hdr"] >= 1 and stats["ok_after_term"] >= 1, stats
    # every client left its connection after the `Connection: close` answer, so the server
    # did not wait for the shutdown timeout
    assert took < 7, f"exit took {took:.1f} s"
    assert "shutting down" in _log(log)


# --- a minimal HTTP/2 client on a raw socket (curl 7.88, Debian 12's, cannot reuse an h2c
# connection: curl bug #10634, fixed in curl 8.0; nginx fails the same way with it) ---------
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def _hpack_literal(name: str, value: str) -> bytes:
    # literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


class H2:
    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.sendall(H2_PREFACE + _frame(4, 0, 0))  # SETTINGS
        self.buf = b""
        self.authority = f"{host}:{port}"

    def get(self, stream: int, path: str) -> None:
        block = b"".join(_hpack_literal(n, v) for n, v in [
            (":method", "GET"), (":scheme", "http"), (":authority", self.authority), (":path", path)])
        self.sock.sendall(_frame(1, 0x5, stream, block))  # HEADERS, END_STREAM | END_HEADERS

    def frame(self):
        """Next frame (type, flags, stream, payload); None when the server closed."""
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        n = int.from_bytes(self.buf[:3], "big")
        ftype, flags = self.buf[3], self.buf[4]
        stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
        if ftype == 4 and not flags & 1:
            self.sock.sendall(_frame(4, 1, 0))  # ACK the server's SETTINGS
        if ftype == 6 and not flags & 1:
            self.sock.sendall(_frame(6, 1, 0, payload))  # answer PING
        return ftype, flags, stream, payload

    def response(self, stream: int) -> tuple[bytes, bytes]:
        """(header block, body) of `stream`."""
        headers, body = b"", b""
        while True:
            f = self.frame()
            assert f is not None, f"connection closed before stream {stream} ended"
            ftype, flags, sid, payload = f
            assert ftype != 7, f"GOAWAY: {payload!r}"
            if sid != stream:
                continue
            if ftype == 1:
                headers += payload
            elif ftype == 0:
                body += payload
            elif ftype == 3:
                raise AssertionError(f"RST_STREAM {payload!r}")
            if ftype in (0, 1) and flags & 1:
                return headers, body


def test_http2_cleartext_two_requests_on_one_connection(tmp_path):
    url, proc, log = _serve(tmp_path, "h2c")
    host, port = _host_port(url)
    try:
        # curl: h2c with prior knowledge
        out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                              "%{http_version} %{http_code}", url + "/datasets"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout == "2 200", (out.stdout, out.stderr)
        c = H2(host, port)
        for stream, path in [(1, "/datasets"), (3, "/status"), (5, "/datasets/lc/zarr/tas/1.0")]:
            c.get(stream, path)
            headers, body = c.response(stream)
            assert headers[:1] == b"\x88", (path, headers[:20])  # :status 200 (static table index 8)
            assert body, path
        assert body == requests.get(url + "/datasets/lc/zarr/tas/1.0", timeout=10).content
    finally:
        stop_server(proc)
    assert proc.returncode == 0, _log(log)[-3000:]


def test_http2_tls_alpn_two_requests_on_one_connection(tmp_path):
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    url, proc, log = _serve(tmp_path, "h2tls", "--tls-cert", str(crt), "--tls-key", str(key),
                            "--header-timeout", "2")
    try:
        out = subprocess.run(["curl", "-sS", "--cacert", str(crt), "--http2", "-o", "/dev/null", "-o", "/dev/null",
                              "-w", "%{http_version} %{http_code} %{num_connects}\n",
                              url + "/datasets", url + "/datasets/lc/zarr/tas/2.0"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        # both over HTTP/2 (ALPN), the second on the first one's connection
        assert out.stdout.split("\n")[:2] == ["2 200 1", "2 200 0"], (out.stdout, out.stderr)
        # HTTP/1.1 over TLS still works
        out = subprocess.run(["curl", "-sS", "--cacert", str(crt), "--http1.1", "-o", "/dev/null", "-w",
                              "%{http_version} %{http_code}", url + "/healthz"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout == "1.1 200", (out.stdout, out.stderr)
        # a client that never starts its TLS handshake is dropped after the header timeout,
        # one that completes it but sends no request too
        ctx = ssl.create_default_context(cafile=str(crt))
        t0 = time.monotonic()
        raw = socket.create_connection(_host_port(url))
        done = ctx.wrap_socket(socket.create_connection(_host_port(url)), server_hostname="127.0.0.1")
        closed = _closed_within([raw], timeout=6)
        assert closed and 1.8 <= closed[raw] - t0 <= 4, closed
        done.settimeout(6)
        try:
            data = done.recv(1024)
        except (ssl.SSLError, OSError):  # closed without close_notify
            data = b""
        assert data == b"" and time.monotonic() - t0 <= 5
        raw.close()
        done.close()
    finally:
        stop_server(proc)
    assert proc.returncode == 0, _log(log)[-3000:]


def test_http2_sigterm_sends_goaway_and_idle_timeout_closes(tmp_path):
    url, proc, log = _serve(tmp_path, "h2term", "--idle-timeout", "1.5", "--header-timeout", "5",
                            "--drain-period", "3")
    host, port = _host_port(url)
    try:
        # idle: GOAWAY after the idle timeout, then the server closes the connection
        c = H2(host, port)
        c.get(1, "/healthz")
        c.response(1)
        t0 = time.monotonic()
        f = c.frame()
        while f is not None and f[0] != 7:
            f = c.frame()
        assert f is not None and f[0] == 7, "no GOAWAY on an idle HTTP/2 connection"
        assert 1.2 <= time.monotonic() - t0 <= 3.5, time.monotonic() - t0
        # SIGTERM: GOAWAY at once (not after the idle timeout), the process exits 0
        c = H2(host, port)
        c.get(1, "/healthz")
        c.response(1)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        f = c.frame()
        while f is not None and f[0] != 7:
            f = c.frame()
        assert f is not None and f[0] == 7, "no GOAWAY after SIGTERM"
        assert time.monotonic() - t0 < 0.8, "GOAWAY waited for the idle timeout, not sent on SIGTERM"
        assert proc.wait(timeout=10) == 0
    finally:
        stop_server(proc)
    assert proc.returncode == 0, _log(log)[-3000:]

#!/usr/bin/env python3
"""Cost of OpenTelemetry tracing on the pass-through bench: cloudify with traces off vs on.

    otel.py [--years 2] [--connections 8] [--client wrk|python|oha] [--repeats 3]
            [--sampler always_on|parentbased_traceidratio --sampler-arg 0.01]
            [--workdir /var/tmp/cloudify-bench] [--cloudify-bin PATH]

The question it answers (issue #18, bar: tracing costs <= 3 %): two `cloudify serve` processes
over the same benchmark dataset (make_data.py, shared with run.py and passthrough.py), one
without OTEL_* variables (no trace layer installed), one exporting every request's spans
(request -> dataset -> chunk.read -> encode; sampler always_on, so the worst case: every
request is recorded) over OTLP/HTTP to a real receiver, rotel's agent (from the PyPI wheel, its
spans dropped by the blackhole exporter so the receiver costs little). Both serve /kerchunk and
/zarr (v2) pass-through chunks to the same load client, in alternating order per pass; medians
of chunks/s and of server CPU per chunk (the traced server's includes its export thread), and
the ratios on/off.

Exit status: 0 ok; 1 a server failed; 2 set-up failed; 3 --enforce-bar and a throughput ratio
below 0.97; 130 interrupted.
"""
import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import json

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (shared helpers: servers, load clients)
from run import DATASET, Client, Server, SetupError, log, median  # noqa: E402

BAR = 0.97


def rotel_agent(python):
    out = subprocess.run([python, "-c", "import rotel, os; print(os.path.dirname(rotel.__file__))"],
                         capture_output=True, text=True)
    path = os.path.join(out.stdout.strip(), "rotel-agent")
    if out.returncode != 0 or not os.access(path, os.X_OK):
        raise SetupError(f"rotel is not installed for {python} (pip install -r e2e/requirements.txt)")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=int, default=2)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--workdir", default="/var/tmp/cloudify-bench")
    ap.add_argument("--cloudify-bin", default=os.environ.get("CLOUDIFY_BIN") or run.DEFAULT_BIN)
    ap.add_argument("--port-range", default="19700-19799")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--client", choices=["python", "oha", "wrk"], default="wrk")
    ap.add_argument("--wrk-duration", type=int, default=10)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--sampler", default="always_on",
                    help="OTEL_TRACES_SAMPLER of the traced server (always_on: every request, the worst case)")
    ap.add_argument("--sampler-arg", default="1.0", help="OTEL_TRACES_SAMPLER_ARG (the ratio of a *traceidratio sampler)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--request-timeout", type=float, default=120)
    ap.add_argument("--fetch-timeout", type=float, default=1800)
    ap.add_argument("--enforce-bar", action="store_true")
    a = ap.parse_args()
    a.workdir = os.path.abspath(a.workdir)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    servers, failures = [], []
    try:
        logdir = os.path.join(a.workdir, "logs")
        os.makedirs(logdir, exist_ok=True)
        os.makedirs(os.path.join(a.workdir, "results"), exist_ok=True)
        binary = os.path.abspath(a.cloudify_bin)
        if not os.access(binary, os.X_OK):
            raise SetupError(f"cloudify binary not found: {binary} (cargo build --release)")
        client = Client(a, a.workdir)
        pattern, _ = run.ensure_data(a, a.python)

        http_port = free_port()
        col = Server("rotel", [rotel_agent(a.python), "start", "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
                               "--otlp-grpc-endpoint", f"127.0.0.1:{free_port()}", "--exporter", "blackhole"], logdir)
        col.start()
        servers.append(col)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
                break
            except OSError:
                if not col.alive() or time.monotonic() > deadline:
                    raise SetupError(f"rotel did not start: {col.log_tail()}")
                time.sleep(0.1)

        cache = os.environ.get("CLOUDIFY_CACHE_DIR") or os.path.join(a.workdir, "cloudify-cache")
        plain = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        envs = {
            "off": dict(plain, CLOUDIFY_CACHE_DIR=cache),
            "on": dict(plain, CLOUDIFY_CACHE_DIR=cache, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{http_port}",
                       OTEL_TRACES_SAMPLER=a.sampler, OTEL_SERVICE_NAME="cloudify-bench",
                       **({"OTEL_TRACES_SAMPLER_ARG": a.sampler_arg} if "ratio" in a.sampler else {})),
        }
        targets = []
        for mode, env in envs.items():
            listen = os.path.join(a.workdir, f"otel-{mode}.listen")
            if os.path.exists(listen):
                os.remove(listen)
            s = Server(f"cloudify-otel-{mode}", [binary, "serve", DATASET, pattern, "--host", "127.0.0.1",
                                                 "--port-range", a.port_range, "--listen-file", listen], logdir, env=env)
            s.start()
            servers.append(s)
            run.wait_ready(s, ["/.zmetadata"], a.start_timeout, listen)
            targets.append({"name": f"kerchunk-{mode}", "zarr": f"{s.base}/datasets/{DATASET}/kerchunk", "fmt": 2,
                            "server": s, "mode": mode})
            targets.append({"name": f"zarr-v2-{mode}", "zarr": f"{s.base}/datasets/{DATASET}/zarr", "fmt": 2,
                            "server": s, "mode": mode})
        with open(servers[-1].log_path, errors="replace") as f:
            if "exporting traces over OTLP/HTTP" not in f.read():
                raise SetupError("the traced server did not turn OpenTelemetry on (see its log)")

        log("warm-up pass")
        for t in targets:
            client.fetch(t)
        results = {t["name"]: [] for t in targets}
        for r in range(a.repeats):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for t in order:
                pids = run.proc_tree(t["server"].proc.pid)
                c0 = run.cpu_seconds(pids)
                res = client.fetch(t)
                if res.get("chunks"):
                    res["srv_cpu_ms_per_chunk"] = round(1000 * (run.cpu_seconds(pids) - c0) / res["chunks"], 4)
                if res.get("errors"):
                    failures.append(f"{t['name']}: {res.get('error_kinds')} {res.get('stderr', '')}")
                results[t["name"]].append(res)
                log(f"{t['name']} pass {r + 1}: {res.get('chunks_per_s')} chunks/s, "
                    f"{res.get('srv_cpu_ms_per_chunk')} ms CPU/chunk")
        summary = {"client": a.client, "connections": a.connections, "years": a.years, "targets": {}, "ratio_on_off": {}}
        for t in targets:
            cps = [x["chunks_per_s"] for x in results[t["name"]] if x.get("chunks_per_s")]
            cpu = [x["srv_cpu_ms_per_chunk"] for x in results[t["name"]] if x.get("srv_cpu_ms_per_chunk")]
            summary["targets"][t["name"]] = {"chunks_per_s": median(cps) if cps else None,
                                             "srv_cpu_ms_per_chunk": round(statistics.median(cpu), 4) if cpu else None,
                                             "passes": cps}
        for route in ("kerchunk", "zarr-v2"):
            off, on = summary["targets"][f"{route}-off"], summary["targets"][f"{route}-on"]
            summary["ratio_on_off"][route] = {
                "chunks_per_s": round(on["chunks_per_s"] / off["chunks_per_s"], 3)
                if on["chunks_per_s"] and off["chunks_per_s"] else None,
                "srv_cpu_per_chunk": round(on["srv_cpu_ms_per_chunk"] / off["srv_cpu_ms_per_chunk"], 3)
                if on["srv_cpu_ms_per_chunk"] and off["srv_cpu_ms_per_chunk"] else None,
            }
        print(f"{'target':14} {'chunks/s':>10} {'srv CPU ms/chunk':>17}  passes")
        for name, d in summary["targets"].items():
            print(f"{name:14} {d['chunks_per_s'] or 0:10.1f} {d['srv_cpu_ms_per_chunk'] or 0:17.4f}  {d['passes']}")
        print(f"tracing on / off (bar: throughput >= {BAR}): {summary['ratio_on_off']}")
        print("JSON " + json.dumps(summary))
        out = os.path.join(a.workdir, "results", f"otel-{time.strftime('%Y%m%d-%H%M%S')}.json")
        with open(out, "w") as f:
            json.dump(summary, f, indent=1)
        if failures:
            for f_ in failures:
                log(f"FAILED: {f_}")
            return 1
        if a.enforce_bar and any((v["chunks_per_s"] or 0) < BAR for v in summary["ratio_on_off"].values()):
            return 3
        return 0
    except SetupError as e:
        log(f"set-up failed: {e}")
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    sys.exit(main())

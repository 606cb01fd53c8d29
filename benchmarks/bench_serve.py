"""dlkit serve on loopback, side by side: the HTTP floor, dynamic batching on and off, memory.

One run of each, every server in its own process and the load generator in another (its own
GIL), one server at a time:

- throughput at 32 concurrent clients against the same stack's (FastAPI + uvicorn) bare
  endpoint that parses the same JSON body and returns a constant; target >= 50%;
- dynamic batching on against off for cnn-digits at 64 concurrent clients (throughput and p99
  ratios) and at concurrency 1 (batching must not cost more than 10% throughput);
- resident memory of the server with the four digits models loaded; target <= 200 MB.

The clients send the v2 JSON body of one 1x8x8 digit over keep-alive HTTP/1.1 connections
(a minimal asyncio client, so the load generator costs less CPU than the server it measures).

    python benchmarks/bench_serve.py                   # ./models, or $DLKIT_REPO
    python benchmarks/bench_serve.py --repo /tmp/bench --seconds 5 --json

Models missing from the repository are trained briefly (2 epochs: accuracy does not matter
here) and exported first.
"""


import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

MODELS = {  # name -> (arch, hparams), as tests/conftest.py
    "mlp-digits": ("mlp", {"hidden": [64]}),
    "cnn-digits": ("cnn", {"channels": [8, 16], "hidden": 32}),
    "rnn-digits": ("rnn", {"hidden": 32, "cell": "lstm"}),
    "gru-digits": ("rnn", {"hidden": 32, "cell": "gru"}),
}
INFER_PATH = "/v2/models/cnn-digits/infer"
TARGETS = {"floor_ratio": 0.5, "c1_cost": 0.10, "rss_mb": 200}


# -- the servers ------------------------------------------------------------------------------------
class Server:
    """A server subprocess; ``port`` is read from its first line on stderr."""

    def __init__(self, argv: list[str], pattern: str):
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.port = None
        lines: list[str] = []
        deadline = time.monotonic() + 180
        while self.port is None:
            line = self.proc.stderr.readline()
            if not line or time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit("server did not start:\n" + "".join(lines[-20:]))
            lines.append(line)
            match = re.search(pattern, line)
            if match:
                self.port = int(match.group(1))
        # Keep draining stderr (the access log) so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def rss_mb(self) -> tuple[float, float]:
        """Resident memory now and at its peak, in MB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmRSS", "VmHWM")}
        return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def dlkit_server(repo: Path, *flags: str) -> Server:
    argv = [sys.executable, "-m", "dlkit", "serve", "--repo", str(repo), "--port", "0", "--grpc-port", "0", *flags]
    return Server(argv, r"on http://127\.0\.0\.1:(\d+)")


def bare_server() -> Server:
    return Server([sys.executable, __file__, "--bare-server"], r"bare server on port (\d+)")


def run_bare_server() -> None:
    """The HTTP floor: FastAPI + uvicorn, parse the same JSON body, answer a constant."""
    import uvicorn
    from fastapi import FastAPI, Request
    from starlette.responses import Response

    constant = json.dumps({"model_name": "cnn-digits", "model_version": "1", "outputs": [
        {"name": n, "datatype": "FP32", "shape": [1, 10], "data": [0.1] * 10} for n in ("logits", "probabilities")]},
        separators=(",", ":")).encode()
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def infer(request: Request, name: str):
        json.loads(await request.body())
        return Response(constant, media_type="application/json")

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(f"bare server on port {sock.getsockname()[1]}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


# -- the load generator (its own process) -------------------------------------------------------------
def request_bytes(port: int, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def bodies(n: int = 16) -> list[bytes]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                    "data": rng.random(64, dtype=np.float32).round(4).tolist()}]}).encode()
            for _ in range(n)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _interleave(spec: dict) -> dict:
    """Load each target in turn, in short slices over kept-alive connections, alternating the
    order every round, so that load from other processes on the machine falls on each alike."""
    targets, concurrency, path = spec["targets"], spec["concurrency"], spec["path"]
    requests = {label: [request_bytes(t["port"], path, b) for b in bodies()] for label, t in targets.items()}
    conns = {label: [list(await asyncio.open_connection("127.0.0.1", t["port"])) for _ in range(concurrency)]
             for label, t in targets.items()}
    stats = {label: {"latencies": [], "errors": 0, "requests": 0, "seconds": 0.0, "cpu": 0.0, "total": 0}
             for label in targets}

    async def client(label: str, k: int, conn: list, deadline: float, record: bool) -> None:
        i = k
        reqs = requests[label]
        while time.perf_counter() < deadline:
            reader, writer = conn
            sent = time.perf_counter()
            writer.write(reqs[i % len(reqs)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            s = stats[label]
            s["total"] += 1
            if record:
                s["latencies"].append(time.perf_counter() - sent)
                s["errors"] += not head.startswith(b"HTTP/1.1 200")
            if re.search(rb"(?i)connection: *close", head):
                writer.close()
                conn[:] = await asyncio.open_connection("127.0.0.1", targets[label]["port"])

    async def run_slice(label: str, seconds: float, record: bool = True) -> None:
        pid = targets[label]["pid"]
        cpu, total, started = cpu_seconds(pid), stats[label]["total"], time.perf_counter()
        await asyncio.gather(*(client(label, k, c, started + seconds, record) for k, c in enumerate(conns[label])))
        if record:
            s = stats[label]
            s["seconds"] += time.perf_counter() - started
            s["cpu"] += cpu_seconds(pid) - cpu
            s["requests"] += s["total"] - total

    labels = list(targets)
    for label in labels:
        await run_slice(label, spec["warmup"], record=False)
    for r in range(max(1, round(spec["seconds"] / spec["slice"]))):
        for label in labels if r % 2 == 0 else labels[::-1]:
            await run_slice(label, spec["slice"])
    out = {}
    for label, s in stats.items():
        lat = sorted(s["latencies"])
        n = len(lat)
        out[label] = {"concurrency": concurrency, "requests": n, "errors": s["errors"], "rps": n / s["seconds"],
                      "p50_ms": 1000 * lat[n // 2], "p99_ms": 1000 * lat[min(n - 1, int(n * 0.99))],
                      "cpu_ms_per_request": 1000 * s["cpu"] / max(1, s["requests"])}
    return out


def side_by_side(servers: dict, concurrency: int, seconds: float, slice_seconds: float = 0.25,
                 warmup: float = 0.5, path: str = INFER_PATH) -> dict[str, dict]:
    """Throughput, latency and server CPU per request of each server, measured by a load
    generator in its own process, interleaved (see :func:`_interleave`)."""
    spec = {"targets": {label: {"port": s.port, "pid": s.proc.pid} for label, s in servers.items()},
            "concurrency": concurrency, "seconds": seconds, "slice": slice_seconds, "warmup": warmup, "path": path}
    out = subprocess.run([sys.executable, __file__, "--client", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"load generator failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


# -- the repository -----------------------------------------------------------------------------------
def prepare(repo_root: Path) -> None:
    """Train (briefly) and export whichever of the four digits models is missing."""
    from dlkit.store.repository import ModelRepository

    repo = ModelRepository(repo_root)
    for name, (arch, hparams) in MODELS.items():
        if not repo.versions(name):
            from dlkit.store.recipe import Recipe
            from dlkit.training.run import train

            print(f"training {name} (2 epochs) ...", file=sys.stderr)
            train(Recipe(arch=arch, name=name, model=dict(hparams), train={"epochs": 2}), repo, quiet=True)
        version = repo.resolve(name)
        if not version.has_onnx():
            from dlkit.export.onnx import export_onnx

            print(f"exporting {name} ...", file=sys.stderr)
            export_onnx(version)


# -- the run ----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=os.environ.get("DLKIT_REPO") or "models")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per server and point")
    parser.add_argument("--slice", type=float, default=0.25, help="seconds of one slice; servers alternate by slice")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads per model (dlkit serve --threads)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    repo = Path(args.repo)
    prepare(repo)
    extra = ["--threads", str(args.threads)] if args.threads else []
    s, piece = args.seconds, args.slice
    results: dict = {"seconds_per_point": s, "slice_seconds": piece, "cpus": os.cpu_count()}
    bare = bare_server()
    on = dlkit_server(repo, *extra)  # all four models loaded, batching on (the default)
    off = dlkit_server(repo, "--no-batching", *extra)
    try:
        for name in MODELS:  # every model runs before memory is read
            side_by_side({"on": on}, 4, 0.2, path=f"/v2/models/{name}/infer")
        floor = side_by_side({"bare": bare, "on": on}, 32, s, piece)
        results["bare_c32"], results["on_c32"] = floor["bare"], floor["on"]
        c64 = side_by_side({"on": on, "off": off}, 64, s, piece)
        results["on_c64"], results["off_c64"] = c64["on"], c64["off"]
        c1 = side_by_side({"on": on, "off": off}, 1, s, piece)
        results["on_c1"], results["off_c1"] = c1["on"], c1["off"]
        results["rss_mb"], results["peak_rss_mb"] = on.rss_mb()
    finally:
        for server in (bare, on, off):
            server.stop()

    r = results
    r["floor_ratio"] = r["on_c32"]["rps"] / r["bare_c32"]["rps"]
    r["batching_c64_throughput_ratio"] = r["on_c64"]["rps"] / r["off_c64"]["rps"]
    r["batching_c64_p99_ratio"] = r["on_c64"]["p99_ms"] / r["off_c64"]["p99_ms"]
    r["batching_c1_cost"] = 1 - r["on_c1"]["rps"] / r["off_c1"]["rps"]
    r["errors"] = sum(v["errors"] for v in r.values() if isinstance(v, dict))
    r["targets_met"] = {"floor_ratio": r["floor_ratio"] >= TARGETS["floor_ratio"],
                        "c1_cost": r["batching_c1_cost"] <= TARGETS["c1_cost"],
                        "rss_mb": r["peak_rss_mb"] <= TARGETS["rss_mb"], "errors": r["errors"] == 0}
    if args.json:
        print(json.dumps(r))
        return
    print_table(r)


def print_table(r: dict) -> None:
    def row(label, key):
        v = r[key]
        return (f"| {label:<44} | {v['rps']:>8.0f} | {v['p50_ms']:>7.2f} | {v['p99_ms']:>7.2f} | "
                f"{v['cpu_ms_per_request']:>11.3f} | {v['errors']:>6} |")

    print(f"dlkit serve on loopback, {r['cpus']} CPUs, {r['seconds_per_point']:g} s per server and point in "
          f"alternating {r['slice_seconds']:g} s slices; cnn-digits, JSON, one digit per request")
    print("| setup                                        |    req/s | p50 ms  | p99 ms  | server CPU  | errors |")
    print("|                                              |          |         |         | ms/request  |        |")
    print("|----------------------------------------------|----------|---------|---------|-------------|--------|")
    print(row("bare FastAPI+uvicorn endpoint, 32 clients", "bare_c32"))
    print(row("dlkit serve, batching on, 32 clients", "on_c32"))
    print(row("dlkit serve, batching on, 64 clients", "on_c64"))
    print(row("dlkit serve, batching off, 64 clients", "off_c64"))
    print(row("dlkit serve, batching on, 1 client", "on_c1"))
    print(row("dlkit serve, batching off, 1 client", "off_c1"))
    print()
    ok = {True: "yes", False: "NO"}
    t = r["targets_met"]
    print("| measure                                           | value    | target  | met |")
    print("|---------------------------------------------------|----------|---------|-----|")
    print(f"| throughput vs the bare endpoint, 32 clients       | {r['floor_ratio']:>7.0%}  | >= 50%  | {ok[t['floor_ratio']]:<3} |")
    print(f"| batching on/off throughput, 64 clients            | {r['batching_c64_throughput_ratio']:>7.2f}x | report  |     |")
    print(f"| batching on/off p99 latency, 64 clients           | {r['batching_c64_p99_ratio']:>7.2f}x | report  |     |")
    print(f"| throughput cost of batching, 1 client             | {r['batching_c1_cost']:>7.1%}  | <= 10%  | {ok[t['c1_cost']]:<3} |")
    print(f"| server RSS, four models loaded (peak)             | {r['peak_rss_mb']:>5.0f} MB | <= 200  | {ok[t['rss_mb']]:<3} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare-server"]:
        run_bare_server()
    elif sys.argv[1:2] == ["--client"]:
        print(json.dumps(asyncio.run(_interleave(json.loads(sys.argv[2])))))
    else:
        main()

"""dlkit serve on loopback, side by side with a bare FastAPI + onnxruntime endpoint (the floor).

Every server runs in its own process and the load generator in another (its own GIL). For each
point (clients x rows per request x JSON or binary) the servers take turns in short slices,
alternating the order every round, for ``--reps`` rounds (3), so load from other processes on
the machine falls on each alike; a ratio is the median of the per-round ratios against the
floor, with the lowest and highest in brackets. The servers, all on cnn-digits:

- ``floor``: FastAPI + uvicorn, one handler that parses the same V2 body (orjson; the binary
  extension's tail with numpy) and runs the same onnxruntime session options (one intra-op
  thread, all graph optimizations) inline, answering the same outputs;
- ``dlkit``: ``dlkit serve`` with its defaults (dynamic batching, one instance, access log on);
- ``dlkit-i2``: the same with ``--instances 2``;
- ``grpc``: dlkit's gRPC endpoint on the binary points (raw_input_contents), against REST binary;
- ``mlserver``: Seldon MLServer 1.7 with a minimal onnxruntime runtime (this file's
  ``OnnxRuntime`` class), on the JSON points, when ``--mlserver VENV`` names a venv that has
  ``mlserver`` and ``onnxruntime`` (never a dependency of dlkit).

The load generator (asyncio, keep-alive HTTP/1.1 connections, one HTTP/2 channel per gRPC
client) runs a fixed number of clients for a fixed time: bounded, loopback only.

    python benchmarks/bench_serve.py --repo /tmp/bench/models           # about 3-4 minutes
    python benchmarks/bench_serve.py --clients 1,32 --rows 1 --json-out r.json
    python benchmarks/bench_serve.py --mlserver /tmp/mlserver-venv      # adds MLServer

Models missing from the repository are trained briefly (2 epochs) and exported first.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

MODEL = "cnn-digits"
MODELS = {"cnn-digits": ("cnn", {"channels": [8, 16], "hidden": 32})}  # as tests/conftest.py
INFER_PATH = f"/v2/models/{MODEL}/infer"


# -- the servers ------------------------------------------------------------------------------------
class Server:
    """A server subprocess; ``port`` from a line of its stderr, or given and polled for readiness."""

    def __init__(self, argv: list[str], pattern: str | None = None, port: int | None = None, env=None):
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        self.port = port
        lines: list[str] = []
        deadline = time.monotonic() + 180
        while pattern and self.port is None:
            line = self.proc.stderr.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{argv[:4]} did not start:\n" + "".join(lines[-20:]))
            lines.append(line)
            match = re.search(pattern, line)
            if match:
                self.port = int(match.group(1))
        # Keep draining stderr (the access log) so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [lines.append(x) for x in self.proc.stderr], daemon=True).start()
        while pattern is None and not _ready(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{argv[:4]} did not start:\n" + "".join(lines[-20:]))
            time.sleep(0.5)

    def pids(self) -> list[int]:
        """The server and its children (MLServer infers in worker processes)."""
        out = subprocess.run(["ps", "-o", "pid=", "-g", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()] or [self.proc.pid]

    def rss_mb(self) -> float:
        """Resident memory of the process group now, in MB."""
        total = 0
        for pid in self.pids():
            try:
                total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
            except (OSError, AttributeError):
                pass
        return total / 1024

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dlkit_server(repo: Path, *flags: str) -> Server:
    argv = [sys.executable, "-m", "dlkit", "serve", "--repo", str(repo), "--port", "0", "--models", MODEL, *flags]
    return Server(argv, r"on http://127\.0\.0\.1:(\d+)")


def floor_server(onnx: Path) -> Server:
    return Server([sys.executable, __file__, "--floor-server", str(onnx)], r"floor server on port (\d+)")


def run_floor_server(onnx: str) -> None:
    """The floor: FastAPI + uvicorn + onnxruntime, the V2 body (JSON or binary) in one handler."""
    import numpy as np
    import onnxruntime as ort
    import orjson
    import uvicorn
    from fastapi import FastAPI, Request
    from starlette.responses import Response

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as dlkit serve --threads 1 (its default)
    session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def infer(request: Request, name: str):
        body = await request.body()
        length = request.headers.get("inference-header-content-length")
        doc = orjson.loads(body[:int(length)] if length else body)
        t = doc["inputs"][0]
        if length:
            x = np.frombuffer(body[int(length):], np.float32).reshape(t["shape"])
        else:
            x = np.asarray(t["data"], np.float32).reshape(t["shape"])
        outs = session.run(None, {t["name"]: x})
        if not length:
            return Response(orjson.dumps({"model_name": name, "model_version": "1", "outputs": [
                {"name": n, "datatype": "FP32", "shape": list(o.shape), "data": o.ravel()}
                for n, o in zip(names, outs)]}, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
        header = orjson.dumps({"model_name": name, "model_version": "1", "outputs": [
            {"name": n, "datatype": "FP32", "shape": list(o.shape), "parameters": {"binary_data_size": o.nbytes}}
            for n, o in zip(names, outs)]})
        return Response(header + b"".join(o.tobytes() for o in outs),
                        headers={"inference-header-content-length": str(len(header))},
                        media_type="application/octet-stream")

    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response waits ~40 ms for a delayed ACK (Nagle), as the earlier floor did.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    print(f"floor server on port {sock.getsockname()[1]}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)).run(sockets=[sock])


MLSERVER_RUNTIME = '''
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class OnnxRuntime(MLModel):
    """A minimal onnxruntime runtime: the same session options as the floor."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(self.settings.parameters.uri, options,
                                            providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload):
        x = NumpyCodec.decode_input(payload.inputs[0])
        outs = self.session.run(None, {payload.inputs[0].name: x})
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output(name=n, payload=o) for n, o in zip(self.names, outs)])
'''


def mlserver_server(venv: Path, onnx: Path, folder: Path) -> Server:
    """MLServer 1.7 from its own venv, serving ``onnx`` with the runtime above (its defaults:
    one parallel inference worker process)."""
    port = _free_port()
    (folder / "runtime.py").write_text(MLSERVER_RUNTIME)
    (folder / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": _free_port(), "metrics_port": _free_port(), "host": "127.0.0.1"}))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "runtime.OnnxRuntime", "parameters": {"uri": str(onnx)}}))
    return Server([str(venv / "bin" / "mlserver"), "start", str(folder)], port=port)


# -- the load generator (its own process) -------------------------------------------------------------
def make_bodies(rows: int, binary: bool, n: int = 8) -> list[tuple[bytes, dict]]:
    """``n`` V2 request bodies of ``rows`` digits each, and their extra headers."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        x = rng.random((rows, 1, 8, 8), dtype=np.float32).round(4)
        tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
        if binary:
            tensor["parameters"] = {"binary_data_size": x.nbytes}
            header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
            out.append((header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}))
        else:
            tensor["data"] = x.ravel().tolist()
            out.append((json.dumps({"inputs": [tensor]}).encode(), {}))
    return out


def _http_request(port: int, body: bytes, headers: dict) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST {INFER_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes ``pids`` have used so far."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


class HttpClients:
    """``n`` keep-alive HTTP/1.1 connections to one server."""

    def __init__(self, port: int, bodies: list[tuple[bytes, dict]]):
        self.port = port
        self.requests = [_http_request(port, b, h) for b, h in bodies]

    async def open(self, n: int) -> None:
        self.conns = [list(await asyncio.open_connection("127.0.0.1", self.port)) for _ in range(n)]

    async def call(self, k: int, i: int) -> bool:
        reader, writer = conn = self.conns[k]
        writer.write(self.requests[i % len(self.requests)])
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
        await reader.readexactly(length)
        if re.search(rb"(?i)connection: *close", head):
            writer.close()
            conn[:] = await asyncio.open_connection("127.0.0.1", self.port)
        return head.startswith(b"HTTP/1.1 200")


class GrpcClients:
    """``n`` gRPC channels (one HTTP/2 connection each) calling ModelInfer with raw contents."""

    def __init__(self, port: int, rows: int):
        import numpy as np

        from dlkit.serve.proto import kserve_v2_pb2 as pb

        self.pb, self.port = pb, port
        x = np.random.default_rng(0).random((rows, 1, 8, 8), dtype=np.float32).round(4)
        request = pb.ModelInferRequest(model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=list(x.shape))], raw_input_contents=[x.tobytes()])
        self.request = request

    async def open(self, n: int) -> None:
        import grpc

        self.calls = []
        for _ in range(n):
            # A subchannel pool of its own: one HTTP/2 connection per client, as HTTP has.
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}",
                                                options=[("grpc.use_local_subchannel_pool", 1)])
            self.calls.append(channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=self.pb.ModelInferRequest.SerializeToString,
                response_deserializer=self.pb.ModelInferResponse.FromString))

    async def call(self, k: int, i: int) -> bool:
        await self.calls[k](self.request, timeout=60)
        return True


async def _interleave(spec: dict) -> dict:
    """Each target in turn for one slice per round, the order reversed every other round."""
    clients, targets = spec["clients"], spec["targets"]
    bodies = make_bodies(spec["rows"], spec["binary"])
    conns = {label: (GrpcClients(t["port"], spec["rows"]) if t.get("grpc") else HttpClients(t["port"], bodies))
             for label, t in targets.items()}
    for label, c in conns.items():
        try:
            await c.open(clients)
        except OSError as exc:
            raise SystemExit(f"{label}: {exc}") from None
    stats = {label: {"latencies": [], "errors": 0, "rounds": [], "cpu": 0.0, "requests": 0} for label in targets}

    async def client(label: str, k: int, deadline: float, record: bool) -> None:
        i, s, conn = k, stats[label], conns[label]
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                ok = await conn.call(k, i)
            except Exception:  # noqa: BLE001 - a failed call is counted, the run goes on
                ok = False
            i += 1
            if record:
                s["latencies"].append(time.perf_counter() - sent)
                s["errors"] += not ok

    async def run_slice(label: str, seconds: float, record: bool = True) -> None:
        pids = targets[label]["pids"]
        cpu, count, started = cpu_seconds(pids), len(stats[label]["latencies"]), time.perf_counter()
        await asyncio.gather(*(client(label, k, started + seconds, record) for k in range(clients)))
        if record:
            s = stats[label]
            done = len(s["latencies"]) - count
            s["rounds"].append(done / (time.perf_counter() - started))
            s["cpu"] += cpu_seconds(pids) - cpu
            s["requests"] += done

    labels = list(targets)
    for label in labels:
        await run_slice(label, spec["warmup"], record=False)
    for r in range(spec["reps"]):
        for label in labels if r % 2 == 0 else labels[::-1]:
            await run_slice(label, spec["slice"])
    out = {}
    for label, s in stats.items():
        lat = sorted(s["latencies"])
        n = len(lat)
        out[label] = {"rounds_rps": s["rounds"], "rps": statistics.mean(s["rounds"]), "errors": s["errors"],
                      "p50_ms": 1000 * lat[n // 2], "p99_ms": 1000 * lat[min(n - 1, int(n * 0.99))],
                      "cpu_ms_per_request": 1000 * s["cpu"] / max(1, s["requests"])}
    return out


def side_by_side(servers: dict, clients: int, rows: int, binary: bool, reps: int, slice_s: float,
                 warmup: float) -> dict:
    """One point: every server in ``servers`` (label -> (Server, grpc port or None))."""
    targets = {label: {"port": grpc or s.port, "grpc": bool(grpc), "pids": s.pids()}
               for label, (s, grpc) in servers.items()}
    spec = {"targets": targets, "clients": clients, "rows": rows, "binary": binary, "reps": reps,
            "slice": slice_s, "warmup": warmup}
    out = subprocess.run([sys.executable, __file__, "--client", json.dumps(spec)], capture_output=True, text=True,
                         timeout=600)
    if out.returncode:
        raise SystemExit(f"load generator failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def ratios(point: dict, base: str = "floor") -> dict:
    """label -> (median, lowest, highest) of the per-round throughput ratios against ``base``."""
    out = {}
    for label, r in point.items():
        each = [a / b for a, b in zip(r["rounds_rps"], point[base]["rounds_rps"])]
        out[label] = (statistics.median(each), min(each), max(each))
    return out


# -- the run ----------------------------------------------------------------------------------------------
def prepare(repo_root: Path) -> Path:
    """Train (briefly) and export cnn-digits if it is missing; returns its model.onnx."""
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
    return repo.resolve(MODEL).onnx_path


def start_servers(repo: Path, onnx: Path, mlserver: str | None, tmp: Path) -> dict:
    grpc_port = _free_port()
    servers = {"floor": (floor_server(onnx), None),
               "dlkit": (dlkit_server(repo, "--grpc-port", str(grpc_port)), None),
               "dlkit-i2": (dlkit_server(repo, "--instances", "2", "--grpc-port", "0"), None)}
    servers["grpc"] = (servers["dlkit"][0], grpc_port)
    if mlserver:
        servers["mlserver"] = (mlserver_server(Path(mlserver), onnx, tmp), None)
    return servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=os.environ.get("DLKIT_REPO") or "models")
    parser.add_argument("--clients", default="1,8,32,64", help="comma-separated client counts")
    parser.add_argument("--rows", default="1,64", help="comma-separated rows per request")
    parser.add_argument("--reps", type=int, default=3, help="rounds per point (ratios: median of the rounds)")
    parser.add_argument("--slice", type=float, default=0.5, help="seconds of one server's slice in a round")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured seconds per server and point")
    parser.add_argument("--mlserver", help="a venv with mlserver 1.7 and onnxruntime: adds MLServer on JSON points")
    parser.add_argument("--json-out", help="also write every number to this JSON file")
    args = parser.parse_args()
    repo = Path(args.repo)
    onnx = prepare(repo)
    points = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        servers = start_servers(repo, onnx, args.mlserver, Path(tmp))
        try:
            for rows in map(int, args.rows.split(",")):
                for binary in (False, True):
                    for clients in map(int, args.clients.split(",")):
                        chosen = {k: v for k, v in servers.items()
                                  if not ((k == "grpc" and not binary) or (k == "mlserver" and binary))}
                        point = side_by_side(chosen, clients, rows, binary, args.reps, args.slice, args.warmup)
                        points.append({"clients": clients, "rows": rows, "binary": binary, "servers": point,
                                       "ratios": ratios(point)})
                        print(f"done: {clients} clients, {rows} rows, {'binary' if binary else 'JSON'}",
                              file=sys.stderr, flush=True)
            memory = {label: s.rss_mb() for label, (s, grpc) in servers.items() if not grpc}
        finally:
            for s, grpc in servers.values():
                if not grpc:
                    s.stop()
    result = {"cpus": os.cpu_count(), "reps": args.reps, "slice": args.slice, "points": points, "rss_mb": memory}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    print_table(result)


def print_table(r: dict) -> None:
    labels = [k for k in ("dlkit", "dlkit-i2", "grpc", "mlserver") if any(k in p["servers"] for p in r["points"])]
    print(f"cnn-digits on loopback, {r['cpus']} CPUs; {r['reps']} interleaved rounds of {r['slice']:g} s per "
          "server and point; ratio = median of the per-round req/s ratios against the floor [lowest-highest]")
    head = "| clients | rows | body | floor req/s | floor p99 ms | floor CPU ms/req |"
    head += "".join(f" {k} vs floor | {k} p99 ms | {k} CPU ms/req |" for k in labels)
    print(head)
    print("|" + "---|" * (6 + 3 * len(labels)))
    for p in r["points"]:
        f = p["servers"]["floor"]
        line = (f"| {p['clients']} | {p['rows']} | {'binary' if p['binary'] else 'JSON'} | {f['rps']:.0f} | "
                f"{f['p99_ms']:.1f} | {f['cpu_ms_per_request']:.2f} |")
        for k in labels:
            if k not in p["servers"]:
                line += " - | - | - |"
                continue
            s, (mid, lo, hi) = p["servers"][k], p["ratios"][k]
            errors = f" ({s['errors']} errors)" if s["errors"] else ""
            line += f" {mid:.2f}x [{lo:.2f}-{hi:.2f}]{errors} | {s['p99_ms']:.1f} | {s['cpu_ms_per_request']:.2f} |"
        print(line)
    print()
    print("resident memory after the run (MB, process group): "
          + ", ".join(f"{k} {v:.0f}" for k, v in r["rss_mb"].items()))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--floor-server"]:
        run_floor_server(sys.argv[2])
    elif sys.argv[1:2] == ["--client"]:
        print(json.dumps(asyncio.run(_interleave(json.loads(sys.argv[2])))))
    else:
        main()

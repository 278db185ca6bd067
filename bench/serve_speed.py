"""Serving throughput and latency: ``dogclf serve`` (each engine) vs a tuned TorchServe + SageMaker toolkit and a
tuned LitServe, in one run, with the same model, photos, precision and clients.

Servers (each bound to 127.0.0.1, started, measured at every client count, stopped, one after the other):

* ``dogclf serve`` with its defaults (on an x86 CPU with OpenVINO: the OpenVINO engine), and with ``--engine torch``
  (and ``--engine onnxruntime``, which serves the model's ``model.onnx``, exported first if missing or stale);
* TorchServe 0.12 running the ``dogclf package`` archive through ``sagemaker-pytorch-inference``, exactly as the AWS
  PyTorch inference container does (its config, handler service, ``SAGEMAKER_PROGRAM=inference.py``), over a small
  grid: workers 1 and 2 with ``OMP_NUM_THREADS`` = cores / workers, TorchServe batch size 1, and 8 with a 5 ms
  ``maxBatchDelay`` (set as the container's ``SAGEMAKER_TS_*`` settings do);
* LitServe with dynamic batching (``bench/_litserve_app.py``): on dogclf's torch engine, workers 1 and 2 with torch
  threads = cores / workers, ``max_batch_size`` 16, ``batch_timeout`` 5 ms; and on the model's ONNX export compiled
  by OpenVINO (latency hint, bf16 where native), workers 1 and 2 x threads = cores / workers, batch 8 and 16.

Every server runs the same model directory with dogclf's engine and post-processing in the precision the model was
calibrated in (bf16 for a feature-path model on a CPU with native bfloat16; the ONNX Runtime engine runs fp32):
the handlers' ``model_fn``, LitServe's ``setup`` and ``dogclf serve`` all call ``load_model`` without a precision.
Requests are each server's natural format: the JPEG bytes as ``image/jpeg`` to ``/invocations`` for dogclf and
TorchServe, ``{"image": "<base64>"}`` to ``/predict`` for LitServe.

Clients are threads, each with its own keep-alive connection, sending real Imagewoof JPEGs back to back; each level
runs ``--warmup`` seconds unmeasured, then ``--seconds`` measured: the requests that finish in that window count.
For each level the script reports requests/s, p50/p99 latency, errors, and the server's CPU use (its whole process
tree, in cores) and CPU milliseconds per request; for dogclf also the decode and forward seconds per request from
``/info``. The engine's own decode-only and forward-only cost per image is measured once, in this process, for
comparison. The peers' best row at each level is their best configuration at that level. Top-1 answers of every
server are compared on ``--check`` photos.

    python bench/serve_speed.py --model MODEL_DIR [--clients 1,4,16,64] [--seconds 10] [--warmup 3]
        [--servers dogclf,dogclf-torch,torchserve,litserve,litserve-openvino]

Needs the ``bench`` extra (TorchServe, torch-model-archiver, LitServe), Java 17 for TorchServe, and ``dogclf[onnx]``
for the ONNX export. Each result is judged against the best peer row at that level.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _common import IMAGEWOOF, REPO, machine  # bench/ is on sys.path when a script runs

BENCH = Path(__file__).resolve().parent


@dataclass
class Level:
    clients: int
    ok: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    cpu_cores: float = float("nan")
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_cores * self.seconds * 1000 / self.ok if self.ok else float("nan")


@dataclass
class Server:
    """How to start one server configuration and talk to it."""

    name: str
    family: str  # "dogclf", "torchserve", "litserve"
    start: Callable[[int, Path], subprocess.Popen]
    path: str = "/invocations"
    json_body: bool = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_images(n: int, seed: int) -> list[Path]:
    files = sorted(p for p in IMAGEWOOF.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        sys.exit(f"No JPEGs under {IMAGEWOOF}: this benchmark needs ../shared/data/imagewoof.")
    random.Random(seed).shuffle(files)
    return files[:n]


def extraction_rate(model: Path, paths: list[Path]) -> float:
    """Images/s of the extraction path (``features.extract`` defaults) over the photos: the engine's ceiling."""
    from dogclf.classifier import load_model
    from dogclf.features.extract import ExtractOptions, extract_features

    backbone = load_model(model, device="cpu").net.backbone
    started = time.perf_counter()
    extract_features(backbone, paths, load_model(model).preprocessing, ExtractOptions(device="cpu"), progress=False)
    return len(paths) / (time.perf_counter() - started)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def request(conn: http.client.HTTPConnection, server: Server, image: bytes) -> tuple[int, bytes]:
    if server.json_body:
        body = json.dumps({"image": base64.b64encode(image).decode("ascii")}).encode()
        headers = {"Content-Type": "application/json"}
    else:
        body, headers = image, {"Content-Type": "image/jpeg", "Accept": "application/json"}
    conn.request("POST", server.path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def wait_ready(port: int, server: Server, probe: bytes, process: subprocess.Popen, timeout: float) -> None:
    """Waits until a real image gets a 200 (TorchServe and LitServe answer health checks before their workers load)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with code {process.returncode} before it was ready")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            status, body = request(conn, server, probe)
            conn.close()
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"{server.name} on port {port} not ready after {timeout:.0f} s (last: {last})")


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def dogclf_stats(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/info")
    stats = json.loads(conn.getresponse().read())["stats"]
    conn.close()
    return stats


def run_level(
    port: int, server: Server, images: list[bytes], clients: int, args: argparse.Namespace, pid: int
) -> Level:
    """``clients`` threads, each with its own keep-alive connection, send images back to back."""
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    now = time.perf_counter()
    measure_from, stop_at = now + args.warmup, now + args.warmup + args.seconds
    marks: dict[str, float] = {}

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = index
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                break
            try:
                status, _ = request(conn, server, images[i % len(images)])
            except OSError:
                status = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            finished = time.perf_counter()
            i += clients
            if not measure_from <= finished <= stop_at:
                # Counted by when it finished, as wrk does: with N clients the server completes N / latency requests
                # a second in steady state. (Counting only requests that also *started* in the window undercounts by
                # about latency / window: 2 s answers in a 10 s window read as 20% fewer requests/s.)
                continue
            with lock:
                if status == 200:
                    counts["ok"] += 1
                    latencies.append((finished - started) * 1000)
                else:
                    counts["errors"] += 1
        conn.close()

    def meter() -> None:
        time.sleep(max(0.0, measure_from - time.perf_counter()))
        marks["cpu0"], marks["t0"] = process_tree_cpu(pid), time.perf_counter()
        if server.family == "dogclf":
            marks.update({f"{k}0": v for k, v in dogclf_stats(port).items() if k.endswith("seconds")})
        time.sleep(max(0.0, stop_at - time.perf_counter()))
        marks["cpu1"], marks["t1"] = process_tree_cpu(pid), time.perf_counter()
        if server.family == "dogclf":
            marks.update({f"{k}1": v for k, v in dogclf_stats(port).items() if k.endswith("seconds")})

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    metering = threading.Thread(target=meter)
    for t in [*threads, metering]:
        t.start()
    for t in [*threads, metering]:
        t.join()
    level = Level(clients, counts["ok"], counts["errors"], args.seconds, latencies)
    level.cpu_cores = (marks["cpu1"] - marks["cpu0"]) / (marks["t1"] - marks["t0"])
    for key in ("decode_seconds", "forward_seconds"):
        if f"{key}0" in marks and level.ok:
            level.extra[key] = (marks[f"{key}1"] - marks[f"{key}0"]) * 1000 / level.ok
    return level


def top_labels(port: int, server: Server, images: list[bytes]) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    labels = []
    for image in images:
        status, body = request(conn, server, image)
        labels.append(json.loads(body)["predictions"][0]["label"] if status == 200 else f"HTTP {status}")
    conn.close()
    return labels


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _env() -> dict[str, str]:
    """The servers' environment: this checkout's dogclf, and no DOGCLF_PRECISION (every side as calibrated)."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    env.pop("DOGCLF_PRECISION", None)
    return env


def dogclf_server(model: Path, name: str, flags: list[str]) -> Server:
    def start(port: int, work: Path) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "dogclf", "serve", "--model", str(model), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--no-access-log", "--device", "cpu", *flags]
        log = (work / f"{name}.log").open("wb")
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_env(), cwd=REPO)

    return Server(name, "dogclf", start)


def torchserve_server(model: Path, workers: int, batch: int, delay_ms: int, cores: int) -> Server:
    """The ``dogclf package`` archive under TorchServe + the SageMaker toolkit, as the AWS container runs it."""
    name = f"torchserve w{workers} b{batch}" + (f" {delay_ms}ms" if batch > 1 else "")

    def start(port: int, work: Path) -> subprocess.Popen:
        import sagemaker_pytorch_serving_container

        root = work / name.replace(" ", "_")
        root.mkdir()
        archive = root / "model.tar.gz"
        subprocess.run(
            [sys.executable, "-m", "dogclf", "package", str(model), "-o", str(archive)],
            check=True,
            cwd=REPO,
            env=_env(),
            capture_output=True,
        )
        model_dir = root / "model"
        with tarfile.open(archive) as tar:
            tar.extractall(model_dir, filter="data")
        store = root / "store"
        store.mkdir()
        etc = Path(sagemaker_pytorch_serving_container.__file__).parent / "etc"
        models = {
            "model": {
                "1.0": {
                    "defaultVersion": True,
                    "marName": "model.mar",
                    "minWorkers": workers,
                    "maxWorkers": workers,
                    "batchSize": batch,
                    "maxBatchDelay": delay_ms,
                    "responseTimeout": 120,
                }
            }
        }
        lines = [
            f"inference_address=http://127.0.0.1:{port}",
            f"management_address=http://127.0.0.1:{free_port()}",
            f"metrics_address=http://127.0.0.1:{free_port()}",
            f"default_workers_per_model={workers}",
            "default_service_handler=sagemaker_pytorch_serving_container.handler_service:handle",
            "vmargs=-XX:-UseContainerSupport -Xmx1g",
            f"models={json.dumps(models)}",
            "",
        ]
        config = root / "config.properties"
        config.write_text((etc / "default-ts.properties").read_text() + "\n" + "\n".join(lines))
        env = {
            **_env(),
            "SAGEMAKER_PROGRAM": "inference.py",
            "SAGEMAKER_HANDLER": "sagemaker_pytorch_serving_container.handler_service",
            "PYTHONPATH": str(model_dir / "code"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": str(max(1, cores // workers)),
        }
        torchserve = shutil.which("torchserve", path=env["PATH"])
        if torchserve is None:
            sys.exit("torchserve is not installed: pip install -c constraints.txt -e '.[bench]'")
        cmd = [torchserve, "--start", "--foreground", "--ncs", "--model-store", str(store), "--ts-config", str(config)]
        cmd += ["--models", f"model={model_dir}"]
        log = (work / f"{root.name}.log").open("wb")
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)

    return Server(name, "torchserve", start)


def litserve_server(
    model: Path, workers: int, batch: int, timeout_ms: float, cores: int, runtime: str = "torch"
) -> Server:
    name = f"litserve {runtime} w{workers} b{batch} {timeout_ms:g}ms"

    def start(port: int, work: Path) -> subprocess.Popen:
        cmd = [sys.executable, str(BENCH / "_litserve_app.py"), "--model", str(model), "--port", str(port)]
        cmd += ["--runtime", runtime]
        cmd += ["--workers", str(workers), "--max-batch-size", str(batch), "--batch-timeout-ms", str(timeout_ms)]
        cmd += ["--threads", str(max(1, cores // workers))]
        log = (work / f"{name.replace(' ', '_')}.log").open("wb")
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_env(), cwd=REPO)

    return Server(name, "litserve", start, path="/predict", json_body=True)


def ensure_onnx(model: Path) -> None:
    """Exports ``model/model.onnx`` unless a fresh one is there (so the engines do not export at start-up)."""
    from dogclf.classifier.runtimes import fresh_export

    if fresh_export(model) is None:
        print(f"exporting {model}/model.onnx for the onnxruntime and openvino engines ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "dogclf", "export", str(model), "--overwrite"], check=True, cwd=REPO, env=_env()
        )


def engine_costs(model: Path, images: list[bytes]) -> str:
    """Decode-only and forward-only milliseconds per image of the torch engine, in this process."""
    from dogclf.classifier import load_model
    from dogclf.inference.threads import ThreadBudget, torch_threads
    from dogclf.serving.codec import prepared_image

    classifier = load_model(model, device="cpu")
    started = time.perf_counter()
    arrays = [prepared_image(classifier, data) for data in images]
    decode = (time.perf_counter() - started) * 1000 / len(images)
    lines = [f"decode + resize + crop: {decode:.2f} ms per image (one thread)"]
    cores = ThreadBudget.plan().cores
    for threads in sorted({1, cores}):
        with torch_threads(threads):
            for batch in (1, 8):
                classifier.forward(arrays[:batch])
                started = time.perf_counter()
                for start in range(0, len(arrays), batch):
                    classifier.forward(arrays[start : start + batch])
                ms = (time.perf_counter() - started) * 1000 / len(arrays)
                lines.append(
                    f"forward ({classifier.precision}) batch {batch}, {threads} thread(s): {ms:.2f} ms per image"
                )
    return "; ".join(lines)


def bench_server(
    server: Server, images: list[bytes], args: argparse.Namespace, work: Path
) -> tuple[list[Level], list[str]]:
    port = free_port()
    process = server.start(port, work)
    try:
        wait_ready(port, server, images[0], process, timeout=300)
        levels = []
        for clients in args.clients:
            level = run_level(port, server, images, clients, args, process.pid)
            extra = "".join(f"  {k.split('_')[0]} {v:.1f} ms/req" for k, v in level.extra.items())
            print(
                f"{server.name:>26} clients={clients:<3} {level.rps:7.1f} req/s  p50 {level.percentile(50):7.1f} ms  "
                f"p99 {level.percentile(99):7.1f} ms  errors={level.errors}  cpu {level.cpu_cores:.2f} cores "
                f"({level.cpu_ms_per_request:.1f} ms/req){extra}",
                flush=True,
            )
            levels.append(level)
        return levels, top_labels(port, server, images[: args.check])
    finally:
        stop(process)


def servers_to_run(args: argparse.Namespace, cores: int) -> list[Server]:
    wanted = args.servers.split(",")
    servers: list[Server] = []
    if "dogclf" in wanted:
        servers.append(dogclf_server(args.model, "dogclf serve", shlex.split(args.serve_args)))
    for engine in ("torch", "onnxruntime"):
        if f"dogclf-{engine}" in wanted:
            servers.append(dogclf_server(args.model, f"dogclf serve --engine {engine}", ["--engine", engine]))
    if "torchserve" in wanted:
        for workers in args.peer_workers:
            for batch, delay in ((1, 0), (8, 5)):
                servers.append(torchserve_server(args.model, workers, batch, delay, cores))
    if "litserve" in wanted:
        for workers in args.peer_workers:
            servers.append(litserve_server(args.model, workers, 16, 5.0, cores))
    if "litserve-openvino" in wanted:
        for workers in args.peer_workers:
            for batch in (8, 16):
                servers.append(litserve_server(args.model, workers, batch, 5.0, cores, runtime="openvino"))
    return servers


def best(results: dict[str, list[Level]], family: str, servers: list[Server], index: int) -> tuple[str, Level] | None:
    """The peer row with the most requests/s at level ``index``, of ``family`` (``"peers"``: of any peer)."""
    rows = [
        (s.name, results[s.name][index])
        for s in servers
        if (s.family == family or (family == "peers" and s.family != "dogclf")) and s.name in results
    ]
    return max(rows, key=lambda row: row[1].rps) if rows else None


def compare(mine: str, results: dict[str, list[Level]], servers: list[Server], extraction: float) -> None:
    """Prints ``mine`` against the best peer at each level: overall, TorchServe's and LitServe's best."""
    ours = results.get(mine)
    if ours is None:
        return
    print(f"\n{mine} (defaults) vs the best peer configuration at each level:\n")
    peer = "req/s | p99 ms | ratio"
    print(
        f"| clients | {mine} req/s | p99 ms | best peer | {peer} | best TorchServe | {peer} | best LitServe | {peer} |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|")
    for i, level in enumerate(ours):
        row = f"| {level.clients} | {level.rps:.1f} ({level.rps / extraction:.2f}x extraction) | "
        row += f"{level.percentile(99):.0f} |"
        for family in ("peers", "torchserve", "litserve"):
            found = best(results, family, servers, i)
            if found is None:
                row += " - | - | - | - |"
                continue
            name, other = found
            ratio = level.rps / other.rps if other.rps else float("inf")
            row += f" {name} | {other.rps:.1f} | {other.percentile(99):.0f} | {ratio:.2f}x |"
        print(row)


def _rps(level: Level) -> float:
    return level.rps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a dogclf model directory")
    parser.add_argument("--clients", default="1,4,16,64", help="concurrency levels (default 1,4,16,64)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each level (default 3)")
    parser.add_argument("--images", type=int, default=256, help="distinct JPEGs to cycle through (default 256)")
    parser.add_argument("--check", type=int, default=16, help="images whose answers must agree (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--servers",
        default="dogclf,dogclf-torch,torchserve,litserve,litserve-openvino",
        help="which servers (default: dogclf,dogclf-torch,torchserve,litserve,litserve-openvino; also "
        "dogclf-onnxruntime)",
    )
    parser.add_argument("--serve-args", default="", help="extra `dogclf serve` flags for the torch engine row")
    parser.add_argument("--peer-workers", default="1,2", help="TorchServe and LitServe worker counts (default 1,2)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every server this many times, every other round in reverse order, and keep each server's best "
        "round per level (a cloud VM's speed drifts by 20-30%% over minutes; default 1)",
    )
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.peer_workers = [int(w) for w in args.peer_workers.split(",")]

    from dogclf.inference.threads import ThreadBudget

    cores = ThreadBudget.plan().cores
    paths = pick_images(args.images, args.seed)
    images = [p.read_bytes() for p in paths]
    servers = servers_to_run(args, cores)
    if any(s.name == "dogclf serve --engine onnxruntime" or "openvino" in s.name for s in servers):
        ensure_onnx(args.model)
    print(f"machine: {machine()}")
    print(f"load average (1/5/15 min) at start: {load_average()}")
    print(f"model: {args.model}; {len(images)} JPEGs from {IMAGEWOOF}")
    print(f"each level: {args.warmup:g} s warm-up, then {args.seconds:g} s measured")
    print(f"engine costs in this process: {engine_costs(args.model, images[:32])}", flush=True)
    extraction = extraction_rate(args.model, paths)
    print(f"extraction path (features.extract defaults) on the same photos: {extraction:.1f} img/s\n", flush=True)
    work = Path(tempfile.mkdtemp(prefix="dogclf-serve-bench-"))
    results: dict[str, list[Level]] = {}
    labels: dict[str, list[str]] = {}
    try:
        for round_number in range(max(1, args.rounds)):
            if args.rounds > 1:
                print(f"round {round_number + 1} of {args.rounds}", flush=True)
            for server in servers if round_number % 2 == 0 else servers[::-1]:
                try:
                    levels, answers = bench_server(server, images, args, work)
                except Exception as exc:
                    print(f"{server.name}: FAILED: {exc}", flush=True)
                    for log in sorted(work.glob("*.log")):
                        if log.stem.replace("_", " ") == server.name or log.stem == server.name.replace(" ", "_"):
                            print(f"--- {log.name} (last 2000 chars) ---\n{log.read_text(errors='replace')[-2000:]}")
                    continue
                labels.setdefault(server.name, answers)
                kept = results.get(server.name, levels)
                results[server.name] = [max(a, b, key=_rps) for a, b in zip(kept, levels, strict=True)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best_of = f" (each server's best of {args.rounds} rounds per level)" if args.rounds > 1 else ""
    print(f"\nAll rows:{best_of}\n")
    print("| server | clients | req/s | p50 ms | p99 ms | errors | CPU cores | CPU ms/req |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, levels in results.items():
        for level in levels:
            latency = f"{level.percentile(50):.0f} | {level.percentile(99):.0f}"
            print(
                f"| {name} | {level.clients} | {level.rps:.1f} | {latency} | {level.errors} | {level.cpu_cores:.2f} "
                f"| {level.cpu_ms_per_request:.1f} |"
            )
    for mine in ("dogclf serve", "dogclf serve --engine torch"):
        compare(mine, results, servers, extraction)
    if labels:
        reference = next(iter(labels.values()))
        agree = {name: sum(a == b for a, b in zip(got, reference, strict=True)) for name, got in labels.items()}
        print(f"\nTop-1 answers agreeing with {next(iter(labels))} on {len(reference)} images: {agree}")
    print(f"\nload average (1/5/15 min) at end: {load_average()}")
    print(f"command: python {shlex.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Serving throughput and latency: ``dogclf serve`` vs TorchServe + the SageMaker PyTorch inference toolkit.

Both servers serve the same model directory with the same handlers (``dogclf package`` writes the archive the AWS
PyTorch inference container serves; TorchServe 0.12 runs it here through ``sagemaker-pytorch-inference``, exactly as
that container does, bound to 127.0.0.1). Clients POST real JPEG bytes from Imagewoof to ``/invocations``; each
concurrency level runs for a fixed time after a warm-up. Both run in this one process's run, on the same machine.

    python bench/serve_speed.py --model MODEL_DIR [--clients 1,4,16] [--seconds 20]

MODEL_DIR is any dogclf model directory, e.g. an ``efficientnet_lite0`` head trained with::

    dogclf train --data ../shared/data/imagewoof/train --names examples/imagewoof_names.txt \
        --backbone efficientnet_lite0 --valid-fraction 0.2 --out models/woof

Needs the ``bench`` extra (``pip install -c constraints.txt -e ".[dev,bench]"``) and Java 17 for TorchServe.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from _common import IMAGEWOOF, REPO, machine  # bench/ is on sys.path when a script runs


@dataclass
class LevelResult:
    clients: int
    ok: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_images(n: int, seed: int) -> list[bytes]:
    files = sorted(p for p in IMAGEWOOF.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        sys.exit(f"No JPEGs under {IMAGEWOOF}: this benchmark needs ../shared/data/imagewoof.")
    random.Random(seed).shuffle(files)
    return [p.read_bytes() for p in files[:n]]


def post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.request(
        "POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg", "Accept": "application/json"}
    )
    response = conn.getresponse()
    return response.status, response.read()


def wait_ready(port: int, probe: bytes, process: subprocess.Popen, timeout: float) -> None:
    """Waits until a real image gets a 200 (TorchServe answers /ping before its workers have loaded the model)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before it was ready")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            status, body = post(conn, probe)
            conn.close()
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"server on port {port} not ready after {timeout:.0f} s (last: {last})")


def run_level(port: int, images: list[bytes], clients: int, seconds: float, warmup: float) -> LevelResult:
    """``clients`` threads, each with its own keep-alive connection, send images back to back."""
    stop_at = [0.0]
    measure_from = [0.0]
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = index
        while True:
            started = time.perf_counter()
            if started >= stop_at[0]:
                break
            try:
                status, _ = post(conn, images[i % len(images)])
            except OSError:
                status = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            finished = time.perf_counter()
            i += clients
            if started < measure_from[0] or finished > stop_at[0]:
                continue  # warm-up, or a request that straddles the end of the window
            with lock:
                if status == 200:
                    counts["ok"] += 1
                    latencies.append((finished - started) * 1000)
                else:
                    counts["errors"] += 1
        conn.close()

    now = time.perf_counter()
    measure_from[0] = now + warmup
    stop_at[0] = now + warmup + seconds
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LevelResult(clients, counts["ok"], counts["errors"], seconds, latencies)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_dogclf(model: Path, port: int, extra: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dogclf", "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        [*cmd, *extra], stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO
    )


def start_torchserve(model: Path, work: Path, port: int, log: Path) -> subprocess.Popen:
    """Runs the ``dogclf package`` archive the way the AWS PyTorch inference container does, on 127.0.0.1."""
    archive = work / "model.tar.gz"
    subprocess.run([sys.executable, "-m", "dogclf", "package", str(model), "-o", str(archive)], check=True, cwd=REPO)
    model_dir = work / "model"
    model_dir.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(model_dir, filter="data")
    store = work / "store"
    store.mkdir()
    import sagemaker_pytorch_serving_container

    defaults = (Path(sagemaker_pytorch_serving_container.__file__).parent / "etc" / "default-ts.properties").read_text()
    config = work / "config.properties"
    config.write_text(
        defaults
        + "\n"
        + "\n".join(
            [
                f"inference_address=http://127.0.0.1:{port}",
                f"management_address=http://127.0.0.1:{free_port()}",
                f"metrics_address=http://127.0.0.1:{free_port()}",
                "default_service_handler=sagemaker_pytorch_serving_container.handler_service:handle",
                "vmargs=-XX:-UseContainerSupport -Xmx1g",
                "",
            ]
        )
    )
    env = {
        **os.environ,
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_HANDLER": "sagemaker_pytorch_serving_container.handler_service",
        "PYTHONPATH": str(model_dir / "code"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = ["torchserve", "--start", "--foreground", "--ncs", "--model-store", str(store), "--ts-config", str(config)]
    cmd += ["--models", f"model={model_dir}"]
    torchserve = shutil.which("torchserve", path=env["PATH"])
    if torchserve is None:
        sys.exit("torchserve is not installed: pip install -c constraints.txt -e '.[bench]'")
    cmd[0] = torchserve
    return subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True
    )


def top_labels(port: int, images: list[bytes]) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    labels = []
    for image in images:
        status, body = post(conn, image)
        labels.append(json.loads(body)["predictions"][0]["label"] if status == 200 else f"HTTP {status}")
    conn.close()
    return labels


def bench_server(
    name: str, process: subprocess.Popen, port: int, images: list[bytes], args: argparse.Namespace
) -> tuple[list[LevelResult], list[str]]:
    try:
        wait_ready(port, images[0], process, timeout=180)
        results = []
        for clients in args.clients:
            level = run_level(port, images, clients, args.seconds, args.warmup)
            print(
                f"{name:>10} clients={clients:<3} {level.rps:7.1f} req/s  p50 {level.percentile(50):7.1f} ms  "
                f"p99 {level.percentile(99):7.1f} ms  ok={level.ok} errors={level.errors}",
                flush=True,
            )
            results.append(level)
        results_labels = top_labels(port, images[: args.check])
        return results, results_labels
    finally:
        stop(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a dogclf model directory")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels (default 1,4,16)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each level (default 3)")
    parser.add_argument("--images", type=int, default=256, help="distinct JPEGs to cycle through (default 256)")
    parser.add_argument("--check", type=int, default=16, help="images whose answers must agree (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-args", default="", help="extra `dogclf serve` flags, e.g. '--max-batch-size 16'")
    parser.add_argument("--skip-torchserve", action="store_true")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]

    images = pick_images(args.images, args.seed)
    print(f"machine: {machine()}")
    print(f"model: {args.model}; {len(images)} JPEGs from {IMAGEWOOF}; {args.seconds:g} s per level\n", flush=True)
    work = Path(tempfile.mkdtemp(prefix="dogclf-serve-bench-"))
    try:
        port = free_port()
        ours, our_labels = bench_server(
            "dogclf", start_dogclf(args.model, port, args.serve_args.split(), work / "dogclf.log"), port, images, args
        )
        peer = peer_labels = None
        if not args.skip_torchserve:
            port = free_port()
            peer, peer_labels = bench_server(
                "torchserve", start_torchserve(args.model, work, port, work / "torchserve.log"), port, images, args
            )
    except Exception:
        for log in work.glob("*.log"):
            print(f"--- {log.name} (last 3000 chars) ---\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("\n| clients | dogclf serve req/s | p50 ms | p99 ms | TorchServe req/s | p50 ms | p99 ms | req/s ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for i, level in enumerate(ours):
        row = f"| {level.clients} | {level.rps:.1f} | {level.percentile(50):.0f} | {level.percentile(99):.0f} |"
        if peer:
            other = peer[i]
            ratio = level.rps / other.rps if other.rps else float("inf")
            row += f" {other.rps:.1f} | {other.percentile(50):.0f} | {other.percentile(99):.0f} | {ratio:.2f}x |"
        else:
            row += " - | - | - | - |"
        print(row)
    if peer_labels is not None:
        same = sum(a == b for a, b in zip(our_labels, peer_labels, strict=True))
        print(f"\nTop-1 answers agree on {same}/{len(our_labels)} images.")
    print(f"\ncommand: python {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

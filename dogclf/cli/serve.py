"""``dogclf serve``: a model over HTTP with batching and a web page (the SageMaker container contract)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dogclf.cli.options import add_engine_arg, add_precision_arg

__all__ = ["add_serve_parser", "run_serve"]


def add_serve_parser(sub: Any) -> None:
    """Adds ``dogclf serve`` and its batching, limit and timeout options."""
    sv = sub.add_parser("serve", help="serve a model over HTTP with batching and a web page (SageMaker contract)")
    sv.add_argument("--model", required=True, type=Path, help="model directory")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    sv.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    sv.add_argument("--max-batch-size", type=int, default=32, help="most images per forward pass (default 32)")
    sv.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long an image waits for others to join a batch (default 5)"
    )
    sv.add_argument("--queue-size", type=int, default=256, help="images waiting before 503 Busy (default 256)")
    sv.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MiB (default 16)")
    sv.add_argument("--top-k", type=int, default=None, help="breeds per answer (default $DOGCLF_TOP_K or 5)")
    sv.add_argument(
        "--decode-workers", type=int, default=None, help="image decoding threads (default: a quarter of the cores)"
    )
    sv.add_argument(
        "--forward-workers", type=int, default=1, help="forward passes that may run at once, each on its own batch"
    )
    sv.add_argument(
        "--forward-threads",
        type=int,
        default=None,
        help="torch threads per forward worker (default: the cores not used for decoding, shared among workers)",
    )
    sv.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds before a request gets 504 (default 30; 0: none)"
    )
    sv.add_argument(
        "--decode-memory-mb",
        type=float,
        default=1024.0,
        help="MiB that large photos may hold while decoding at once (default 1024)",
    )
    sv.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds for a request's headers to arrive (default 10)"
    )
    sv.add_argument(
        "--body-timeout", type=float, default=60.0, help="seconds for a body to arrive after its headers (default 60)"
    )
    sv.add_argument(
        "--max-connections", type=int, default=512, help="open connections; more are answered 503 (default 512)"
    )
    sv.add_argument("--device", default="auto", help="auto (default: CUDA if available), cpu, cuda or cuda:N")
    add_precision_arg(sv)
    add_engine_arg(sv)
    sv.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=True, help="log one line per request"
    )


def run_serve(args: argparse.Namespace) -> int:
    """Runs ``dogclf serve`` until interrupted; returns 0."""
    from dogclf.serving.batcher import BatchConfig
    from dogclf.serving.codec import Limits
    from dogclf.serving.handlers import default_top_k
    from dogclf.serving.server import ConnectionLimits, serve

    if args.max_body_mb <= 0:
        raise ValueError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    batching = BatchConfig(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        decode_workers=args.decode_workers,
        forward_workers=args.forward_workers,
        forward_threads=args.forward_threads,
        request_timeout_s=args.request_timeout,
        decode_memory_mb=args.decode_memory_mb,
    )
    limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024))
    top_k = default_top_k(args.environ) if args.top_k is None else args.top_k
    serve(
        args.model,
        host=args.host,
        port=args.port,
        batching=batching,
        limits=limits,
        top_k=top_k,
        device=args.device,
        precision=args.precision,
        engine=args.engine,
        access_log=args.access_log,
        connections=ConnectionLimits(
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            max_connections=args.max_connections,
        ),
    )
    return 0

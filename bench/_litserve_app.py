"""The LitServe peers of ``bench/serve_speed.py``: the same dogclf model behind LitServe's dynamic batching.

What a competent LitServe user writes around a dogclf model: ``setup`` loads it, ``decode_request`` decodes one
JSON request's base64 JPEG with the model's own preparation, ``predict`` runs a batch, and ``encode_response``
answers the same JSON as ``dogclf serve`` (the model's post-processing: temperature, unknown, top-5). Two runtimes:

* ``--runtime torch``: dogclf's eager torch engine with ``--threads`` torch threads per worker;
* ``--runtime openvino``: the model's ONNX export (``dogclf export``; backbone and head) compiled by OpenVINO for the
  CPU the way its docs recommend for a latency-bound server (``PERFORMANCE_HINT=LATENCY``, bf16 inference precision
  where the CPU has native bfloat16, else f32; ``INFERENCE_NUM_THREADS`` = ``--threads``), one infer request per
  worker, the images normalised in NumPy.

    python bench/_litserve_app.py --model MODEL_DIR --port PORT [--runtime torch|openvino] [--workers 1]
        [--max-batch-size 16] [--batch-timeout-ms 5] [--threads N]

POST ``{"image": "<base64 JPEG>"}`` to ``/predict``.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

import litserve as ls


class DogAPI(ls.LitAPI):
    def __init__(self, model: Path, threads: int, runtime: str = "torch", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.threads = threads
        self.runtime = runtime

    def setup(self, device: str) -> None:
        import torch

        from dogclf.classifier import load_model

        torch.set_num_threads(self.threads)
        self.classifier = load_model(self.model, device="cpu", engine="torch")
        self.forward_threads = self.threads
        if self.runtime == "openvino":
            self._setup_openvino()

    def _setup_openvino(self) -> None:
        import numpy as np
        import openvino as ov

        from dogclf.hardware import cpu_has_native_bf16

        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if cpu_has_native_bf16() else "f32",
            "INFERENCE_NUM_THREADS": str(self.threads),
        }
        self.request = ov.Core().compile_model(str(self.model / "model.onnx"), "CPU", config).create_infer_request()
        pre = self.classifier.spec.preprocessing
        self.scale = (1 / (255 * np.asarray(pre.std, dtype=np.float32))).reshape(1, 3, 1, 1)
        self.shift = (np.asarray(pre.mean, dtype=np.float32) / np.asarray(pre.std, dtype=np.float32)).reshape(
            1, 3, 1, 1
        )

    def _forward_openvino(self, images: list[Any]) -> Any:
        import numpy as np
        import torch

        from dogclf.inference.engine import EngineOutput

        batch = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) * self.scale - self.shift
        results = self.request.infer({"images": np.ascontiguousarray(batch)})
        named = {output.get_any_name(): value for output, value in results.items()}
        return EngineOutput(torch.from_numpy(named["logits"].copy()), torch.from_numpy(named["features"].copy()))

    def decode_request(self, request):  # no annotation: LitServe would turn it into a query-string schema
        from dogclf.serving.codec import prepared_image

        return prepared_image(self.classifier, base64.b64decode(request["image"]))

    def batch(self, inputs: list[Any]) -> list[Any]:
        return list(inputs)

    def predict(self, x: Any) -> Any:
        import torch

        if torch.get_num_threads() != self.threads:  # LitServe may run predict in another thread than setup
            torch.set_num_threads(self.threads)
        images = x if isinstance(x, list) else [x]
        output = self._forward_openvino(images) if self.runtime == "openvino" else self.classifier.forward(images)
        answers = self.classifier.answer(output, top_k=5)
        return answers if isinstance(x, list) else answers[0]

    def unbatch(self, output: Any) -> list[Any]:
        return list(output)

    def encode_response(self, output: Any) -> dict[str, Any]:
        return output.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runtime", choices=("torch", "openvino"), default="torch")
    args = parser.parse_args()
    api = DogAPI(
        args.model,
        args.threads,
        args.runtime,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_ms / 1000,
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=args.workers, timeout=60)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning", num_api_servers=1)


if __name__ == "__main__":
    main()

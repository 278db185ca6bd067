"""The LitServe peer of ``bench/serve_speed.py``: the same dogclf model behind LitServe's dynamic batching.

What a competent LitServe user writes around a dogclf model: ``setup`` loads it (in the precision it was calibrated
in, with ``--threads`` torch threads per worker), ``decode_request`` decodes one JSON request's base64 JPEG with the
model's own preparation, ``predict`` runs a batch through the model's engine and post-processing, and
``encode_response`` answers the same JSON as ``dogclf serve``.

    python bench/_litserve_app.py --model MODEL_DIR --port PORT [--workers 1] [--max-batch-size 16]
        [--batch-timeout-ms 5] [--threads N]

POST ``{"image": "<base64 JPEG>"}`` to ``/predict``.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

import litserve as ls


class DogAPI(ls.LitAPI):
    def __init__(self, model: Path, threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.threads = threads

    def setup(self, device: str) -> None:
        import torch

        from dogclf.classifier import load_model

        torch.set_num_threads(self.threads)
        self.classifier = load_model(self.model, device="cpu")
        self.forward_threads = self.threads

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
        answers = self.classifier.answer(self.classifier.forward(images), top_k=5)
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
    args = parser.parse_args()
    api = DogAPI(
        args.model, args.threads, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout_ms / 1000
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=args.workers, timeout=60)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning", num_api_servers=1)


if __name__ == "__main__":
    main()

"""The inference engine: inputs equal to the training transform's, logits and features from one pass, streaming in
order with decoding overlapped, the thread budget, the precision choice and the one post-processing."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import jpeg
from PIL import Image

from dogclf.data.transforms import eval_transform
from dogclf.inference.engine import EngineOutput, TorchEngine
from dogclf.inference.postprocess import PostProcessor
from dogclf.inference.precision import InvalidPrecisionError, choose_precision, recorded_precision
from dogclf.inference.preprocess import ImagePreparer, Normaliser, stack
from dogclf.inference.threads import ThreadBudget, available_cores, torch_threads
from dogclf.model import HeadConfig, build_model


@pytest.fixture
def net(tiny_spec: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(tiny_spec, 4, weights=None, head=HeadConfig()).eval()


def _photos(tmp_path: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i:02d}.jpg"
        path.write_bytes(jpeg(i, size=(50 + 7 * i, 40 + 3 * i)))
        paths.append(path)
    return paths


class ThreadRecorder:
    """A forward pre-hook that records the torch thread count and the thread of every backbone pass."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.threads: list[int] = []
        self.names: list[str] = []
        self.calls = 0
        module.register_forward_pre_hook(self)

    def __call__(self, module: torch.nn.Module, args: Any) -> None:
        self.calls += 1
        self.threads.append(torch.get_num_threads())
        self.names.append(threading.current_thread().name)


def test_prepared_inputs_are_bit_for_bit_those_of_the_training_transform(tiny_spec: Any) -> None:
    pre = tiny_spec.preprocessing
    images = [Image.open(io.BytesIO(jpeg(seed, size=(83, 61)))).convert("RGB") for seed in range(3)]
    images.append(Image.new("RGB", (20, 90), (10, 200, 30)))  # smaller than the crop on one side
    prepare = ImagePreparer(pre)
    ours = Normaliser(pre, torch.device("cpu"))(stack([prepare.from_pil(image) for image in images]))
    reference = torch.stack([eval_transform(pre)(image) for image in images])
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ours, reference)


def test_one_pass_gives_logits_and_the_features_they_came_from(net: torch.nn.Module, tiny_spec: Any) -> None:
    engine = TorchEngine(net, tiny_spec.preprocessing, precision="fp32", forward_batch=4)
    calls = ThreadRecorder(net.backbone)
    arrays = [engine.prepare(jpeg(seed)) for seed in range(6)]
    output = engine.forward(arrays)
    assert calls.calls == 2  # 6 images in forward batches of 4: two backbone passes, no extra pass for features
    assert output.logits.shape == (6, 4)
    assert output.features.shape == (6, 16)
    assert output.logits.dtype == output.features.dtype == torch.float32
    with torch.inference_mode():
        assert torch.allclose(net.head(output.features), output.logits, atol=1e-6)
        batch = Normaliser(tiny_spec.preprocessing, torch.device("cpu"))(stack(arrays)).contiguous()
        assert torch.allclose(net(batch), output.logits, atol=1e-5)


def test_bf16_runs_the_backbone_in_bf16_and_the_head_in_fp32(net: torch.nn.Module, tiny_spec: Any) -> None:
    engine = TorchEngine(net, tiny_spec.preprocessing, precision="bf16")
    output = engine.forward([engine.prepare(jpeg(seed)) for seed in range(3)])
    with torch.inference_mode():
        assert torch.allclose(net.head(output.features), output.logits, atol=1e-6)  # the head as trained: fp32
    exact = TorchEngine(net, tiny_spec.preprocessing, precision="fp32").forward(
        [engine.prepare(jpeg(seed)) for seed in range(3)]
    )
    assert not torch.equal(exact.features, output.features)
    assert torch.allclose(exact.features, output.features, atol=0.05, rtol=0.05)


def test_stream_keeps_order_reports_broken_files_and_decodes_in_threads(
    net: torch.nn.Module, tiny_spec: Any, tmp_path: Path
) -> None:
    paths: list[Any] = _photos(tmp_path, 11)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    paths.insert(4, broken)
    paths.insert(9, tmp_path / "missing.jpg")
    engine = TorchEngine(net, tiny_spec.preprocessing, precision="fp32", forward_batch=3)
    decoders: set[str] = set()
    prepare = engine.prepare

    def recording(source: Any) -> Any:
        decoders.add(threading.current_thread().name)
        return prepare(source)

    batches = list(engine.stream(paths, budget=ThreadBudget.plan(decode_workers=2), prepare=recording))
    positions = [p for b in batches for p in b.positions]
    failures = dict(f for b in batches for f in b.failures)
    assert positions == [i for i in range(len(paths)) if i not in (4, 9)]
    assert set(failures) == {4, 9}
    assert "broken.jpg" in failures[4]
    assert "missing.jpg" in failures[9]
    assert decoders
    assert all(name.startswith("dogclf-decode") for name in decoders)
    logits = torch.cat([b.output.logits for b in batches if b.positions])
    readable = [p for p in paths if p not in (broken, tmp_path / "missing.jpg")]
    alone = engine.forward([engine.prepare(p) for p in readable]).logits
    assert torch.allclose(logits, alone, atol=1e-6)


def test_stream_runs_the_forward_pass_with_the_budgets_threads_and_restores_them(
    net: torch.nn.Module, tiny_spec: Any, tmp_path: Path
) -> None:
    engine = TorchEngine(net, tiny_spec.preprocessing, precision="fp32", forward_batch=2)
    recorder = ThreadRecorder(net.backbone)
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    budget = ThreadBudget(cores=2, decode_workers=1, forward_threads=wanted)
    list(engine.stream(_photos(tmp_path, 5), budget=budget))
    assert recorder.threads == [wanted] * 3
    assert torch.get_num_threads() == before
    # Two forward workers with one thread each run the passes in their own threads.
    recorder.threads.clear()
    recorder.names.clear()
    budget = ThreadBudget(cores=2, decode_workers=1, forward_workers=2, forward_threads=1)
    batches = list(engine.stream(_photos(tmp_path, 9), budget=budget))
    assert [p for b in batches for p in b.positions] == list(range(9))
    assert recorder.threads == [1] * 5
    assert all(name.startswith("dogclf-forward") for name in recorder.names)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("cores", "decode", "workers", "threads"),
    [(1, 1, 1, 1), (2, 1, 2, 1), (4, 1, 2, 1), (8, 1, 2, 3), (16, 2, 2, 7), (64, 4, 2, 30)],
)
def test_thread_budget_gives_forward_passes_the_cores_decoding_does_not_use(
    cores: int, decode: int, workers: int, threads: int
) -> None:
    budget = ThreadBudget.plan(cores=cores)
    assert (budget.decode_workers, budget.forward_workers, budget.forward_threads) == (decode, workers, threads)
    assert ThreadBudget.plan(cores=16, forward_workers=1).forward_threads == 14
    assert ThreadBudget.plan(cores=16, decode_workers=2, forward_threads=3).forward_threads == 3


def test_thread_budget_reads_omp_num_threads_and_describes_itself() -> None:
    assert available_cores({"OMP_NUM_THREADS": "1"}) == 1
    budget = ThreadBudget.plan(cores=2)
    assert budget.describe() == "2 cores: 1 decode thread, 2 forward workers x 1 torch thread"
    assert budget.to_dict() == {"cores": 2, "decode_workers": 1, "forward_workers": 2, "forward_threads": 1}
    assert ThreadBudget.plan(cores=1).describe() == "1 core: 1 decode thread, 1 forward worker x 1 torch thread"
    with pytest.raises(ValueError, match="forward_threads must be an integer >= 1"):
        ThreadBudget(cores=2, decode_workers=1, forward_threads=0)


def test_torch_threads_sets_and_restores() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("native", "requested", "config", "precision", "reason"),
    [
        ("1", None, {"calibration": {"precision": "bf16"}}, "bf16", "as calibrated"),
        ("0", None, {"calibration": {"precision": "bf16"}}, "fp32", "no native bf16"),
        ("0", None, {"training": {"precision": "fp32"}}, "fp32", "as calibrated"),
        ("1", None, {"training": {"precision": "fp32"}}, "bf16", "native bf16"),
        ("0", None, {"calibration": {"precision": "fp32"}, "training": {"precision": "bf16"}}, "fp32", "as calibrated"),
        ("0", None, {}, "fp32", "records no calibration precision"),
        ("1", None, {}, "fp32", "records no calibration precision"),
        ("1", "fp32", {"calibration": {"precision": "bf16"}}, "fp32", "as requested"),
        ("0", "bf16", {}, "bf16", "as requested"),
        ("0", "auto", {}, "fp32", "auto"),
        ("1", "auto", {}, "bf16", "auto"),
    ],
)
def test_the_model_runs_in_the_precision_its_hardware_runs_natively(
    native: str,
    requested: str | None,
    config: dict[str, Any],
    precision: str,
    reason: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOGCLF_CPU_BF16", native)
    choice = choose_precision(requested, config, CPU)
    assert choice.precision == precision
    assert reason in choice.reason
    assert choice.describe().startswith(f"{precision} (")
    assert "emulated" not in choice.reason  # never emulated bf16 by default


def test_precisions_a_cpu_cannot_run() -> None:
    with pytest.raises(InvalidPrecisionError, match="fp16 needs a CUDA device"):
        choose_precision("fp16", {}, CPU)
    with pytest.raises(InvalidPrecisionError, match="unknown precision 'int8'"):
        choose_precision("int8", {}, CPU)
    fallback = choose_precision(None, {"calibration": {"precision": "fp16"}}, CPU)
    assert fallback.precision in ("bf16", "fp32")
    assert "needs CUDA" in fallback.reason
    assert recorded_precision({"calibration": {"precision": None}, "training": {"precision": "bf16"}}) == "bf16"


def test_post_processing_applies_temperature_threshold_and_per_image_top_k() -> None:
    post = PostProcessor(class_names=("a", "b", "c"), temperature=2.0, unknown_threshold=0.5)
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.1, 0.0, 0.2]])
    output = EngineOutput(logits, torch.zeros(2, 5))
    scores = post.scores(output)
    assert torch.allclose(scores.probabilities, torch.softmax(logits / 2.0, dim=1))
    assert scores.unknown.tolist() == [False, True]
    first, second = post(output, top_k=[1, 3])
    assert [p.label for p in first.predictions] == ["a"]
    assert [p.label for p in second.predictions] == ["c", "a", "b"]
    assert (first.unknown, second.unknown) == (False, True)
    assert PostProcessor.from_config({"class_names": ["x", "y"]}).unknown_threshold is None
    with pytest.raises(ValueError, match="temperature"):
        PostProcessor(class_names=("a",), temperature=0.0)


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 0.0, 1e300, float("nan")])
def test_a_temperature_outside_the_bounds_is_refused(temperature: float) -> None:
    with pytest.raises(ValueError, match=r"temperature must be a finite number in \[0\.001, 1000\]"):
        PostProcessor(class_names=("a", "b"), temperature=temperature)


def test_the_smallest_temperature_gives_finite_scores_even_for_huge_logits() -> None:
    """logits / T overflows float32 to inf here (inf - inf is NaN inside softmax); shifting by the max first cannot."""
    post = PostProcessor(class_names=("a", "b", "c"), temperature=1e-3)
    logits = torch.tensor([[1e36, 0.0, -1e36], [3.0, 3.0, -1e38]])

    probabilities = post.probabilities(logits)

    assert torch.isfinite(probabilities).all()
    assert probabilities.tolist() == [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]


def test_the_novelty_score_in_post_processing_sees_the_same_passes_features(
    net: torch.nn.Module, tiny_spec: Any
) -> None:
    """The unknown decision of a model with a novelty score is made on the features of the pass the logits came from."""
    from dogclf.inference.novelty import NoveltyScorer

    engine = TorchEngine(net, tiny_spec.preprocessing, precision="fp32")
    output = engine.forward([engine.prepare(jpeg(seed)) for seed in range(3)])
    bank = torch.nn.functional.normalize(output.features[:1], dim=1).half()  # image 0 is the only "training photo"
    distances = 1.0 - torch.nn.functional.cosine_similarity(output.features, output.features[:1])
    threshold = float(distances[1:].min()) / 2  # image 0 (distance ~0) is known, the others are novel
    novelty = NoveltyScorer(bank=bank, k=1, threshold=threshold)
    post = PostProcessor(class_names=("a", "b", "c", "d"), unknown_threshold=0.0, novelty=novelty)

    scores = post.scores(output)
    answers = post(output, top_k=2)

    assert scores.novelty is not None
    assert torch.allclose(scores.novelty, distances, atol=5e-3)  # the bank is float16
    assert [a.unknown for a in answers] == [False, True, True]
    without_softmax_rule = PostProcessor(class_names=("a", "b", "c", "d"), novelty=novelty)
    assert without_softmax_rule.scores(output).unknown.tolist() == [False, True, True]

"""``dogclf train --profile``: the phase timer, the report page in headless Chromium, and its numbers."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import dogclf
from dogclf.diagnostics import Diagnostics
from dogclf.diagnostics.phases import PhaseTimer, phase
from dogclf.diagnostics.profiler.data import PhaseRow, RunProfile
from dogclf.diagnostics.profiler.findings import profile_findings
from dogclf.diagnostics.profiler.steps import StepTiming
from dogclf.diagnostics.profiler.system import Sample
from dogclf.training.config import TrainConfig

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@phase("outer")
def _outer(timer: PhaseTimer) -> None:
    time.sleep(0.05)
    _inner()


@phase("inner")
def _inner() -> None:
    time.sleep(0.1)


@phase("broken")
def _broken() -> None:
    raise RuntimeError("boom")


def test_phases_nest_exclusively_and_a_failing_step_ends_the_session() -> None:
    errors: list[BaseException] = []
    timer = PhaseTimer(on_error=errors.append)
    _inner()  # no active timer: only runs
    assert timer.phases == {}
    with timer.activate():
        _outer(timer)
        with pytest.raises(RuntimeError, match="boom"):
            _broken()
    outer, inner = timer.phases["outer"], timer.phases["inner"]
    assert 0.1 <= inner.seconds < 0.3
    assert 0.05 <= outer.seconds < inner.seconds
    assert [type(e) for e in errors] == [RuntimeError]
    assert [name for name, _, _ in timer.intervals] == ["inner", "outer", "broken"]


def test_a_run_shorter_than_one_interval_still_gets_one_sample() -> None:
    from dogclf.diagnostics.profiler.system import SystemSampler

    sampler = SystemSampler(interval=30.0)
    sampler.start()
    samples = sampler.stop()
    assert len(samples) == 1
    assert samples[0].cpu
    assert all(0.0 <= c <= 100.0 for c in samples[0].cpu)
    assert sampler.stop() == samples  # idempotent: no second sample


def _run(**overrides: Any) -> RunProfile:
    steps = [
        StepTiming(step=i + 1, epoch=1, data=0.001, forward=0.002, backward=0.002, optimizer=0.001) for i in range(30)
    ]
    defaults: dict[str, Any] = {
        "wall": 10.0,
        "phases": [PhaseRow("training", 9.0, 0.5)],
        "intervals": [("training", 0.5, 9.5)],
        "steps": steps,
        "samples": [Sample(t=1 + i * 0.5, cpu=[97.0, 99.0], iowait=0.0, memory=40.0, rss_gb=1.0) for i in range(16)],
        "info": {"batch_size": 32},
        "cpu_count": 2,
    }
    return RunProfile(**{**defaults, **overrides})


def test_profiler_findings_follow_sagemaker_rules() -> None:
    verdicts = {f.rule: f for f in profile_findings(_run())}
    assert verdicts["CPUBottleneck"].status == "IssuesFound"  # both cores over 90% the whole time, on the CPU
    assert "compute-bound on the CPU" in verdicts["CPUBottleneck"].advice
    assert verdicts["LowGPUUtilization"].status == "NotApplicable"
    assert verdicts["IOBottleneck"].status == "NoIssuesFound"
    assert verdicts["StepOutlier"].status == "NoIssuesFound"
    slow = [StepTiming(step=i + 1, epoch=1, data=0.5 if i % 3 == 0 else 0.001, forward=0.001) for i in range(60)]
    waiting = {f.rule: f for f in profile_findings(_run(steps=slow))}
    assert waiting["IOBottleneck"].status == "IssuesFound"
    assert "raise --workers" in waiting["IOBottleneck"].advice
    idle = [Sample(t=1 + i * 0.5, cpu=[20.0, 10.0], iowait=0.0, memory=40.0, rss_gb=1.0) for i in range(16)]
    assert {f.rule: f for f in profile_findings(_run(samples=idle))}["BatchSize"].status == "IssuesFound"
    assert {f.rule: f for f in profile_findings(_run(samples=idle[:3]))}["BatchSize"].status == "NotEnoughData"


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One profiled training run of the tiny backbone (module-scoped: the report is checked in several ways)."""
    from conftest import _tiny_namespace

    from dogclf.backbones.registry import default_registry

    registry = default_registry()
    registry.register(_tiny_namespace()["tiny"](), override=True, source="tests/diagnostics/test_profile.py")  # type: ignore[operator]
    try:
        root = tmp_path_factory.mktemp("profiled")
        data = dogclf.make_synthetic_dataset(root / "data", num_classes=3, per_split=(16, 4, 4), size=40, seed=1)
        started = time.perf_counter()
        dogclf.train(
            data,
            "tinynet",
            root / "model",
            weights=None,
            config=TrainConfig(epochs=3, batch_size=8, num_workers=0, device="cpu", head_solver="loop"),
            progress=False,
            diagnostics=Diagnostics(profile=True, profile_steps=3, sample_interval=0.1),
        )
        wall = time.perf_counter() - started
    finally:
        registry.unregister("tinynet")
    return {"root": root, "wall": wall, "profile": root / "model" / "profile"}


def test_the_profile_adds_up_to_the_wall_time(profiled: dict[str, Any]) -> None:
    data = json.loads((profiled["profile"] / "profile.json").read_text())
    wall, phases = data["wall_seconds"], {p["name"]: p["seconds"] for p in data["phases"]}
    assert wall <= profiled["wall"]  # the report's clock runs inside train()
    assert abs(sum(phases.values()) - wall) <= 0.1 * wall
    assert abs(data["phase_seconds_total"] - sum(phases.values())) < 1e-6
    for name in ("decode-check", "extraction", "head training", "validation", "checkpointing", "calibration", "saving"):
        assert name in phases, name
    steps = data["steps"]
    assert steps["count"] == 3 * 6  # 48 images / batch 8, 3 epochs
    total = next(c for c in steps["components"] if c["component"] == "total")
    assert total["seconds"] <= phases["head training"] + 1e-6
    assert data["torch_profiler"]["recorded_steps"] == [3, 4, 5]  # skip one, warm up one, record three
    assert Path(data["torch_profiler"]["trace_files"][0]).is_file()
    assert data["torch_profiler"]["operators"]
    assert data["system"]["samples"] >= 1
    assert {f["rule"] for f in data["findings"]} == {
        "CPUBottleneck",
        "IOBottleneck",
        "LowGPUUtilization",
        "BatchSize",
        "StepOutlier",
    }


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
def test_the_report_renders_in_headless_chromium(profiled: dict[str, Any], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    report = profiled["profile"] / "report.html"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1150, "height": 900})
            page.goto(report.as_uri())
            sync_api.expect(page.locator("h1")).to_have_text("dogclf training profile")
            for table in ("#info", "#findings", "#phases", "#steps", "#operators"):
                sync_api.expect(page.locator(table)).to_be_visible()
            images = page.locator("img")
            assert images.count() == 3
            assert all(page.evaluate(f"document.images[{i}].naturalWidth") > 200 for i in range(3))
            seconds = [float(s) for s in page.locator("#phases tbody .seconds").all_text_contents()]
            total = float(page.locator("#phase-total").text_content() or "nan")
            wall = float(page.locator("#wall").text_content() or "nan")
            assert abs(sum(seconds) - total) < 0.002 * len(seconds)
            assert abs(total - wall) <= 0.1 * wall
            rows = page.locator("#findings tbody tr")
            assert rows.count() == 5
            assert re.search(r"(IssuesFound|NoIssuesFound|NotApplicable|NotEnoughData)", rows.first.inner_text())
            screenshot = tmp_path / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 50_000
        finally:
            browser.close()


def test_in_a_sagemaker_job_the_profile_lands_in_the_output_data_dir(
    tiny_tree: Path, tiny_spec: Any, tmp_path: Path
) -> None:
    output = tmp_path / "opt/ml/output/data"
    dogclf.train(
        tiny_tree,
        "tinynet",
        tmp_path / "model",
        weights=None,
        config=TrainConfig(epochs=1, num_workers=0, device="cpu", head_solver="loop"),
        progress=False,
        environ={"SM_OUTPUT_DATA_DIR": str(output)},
        diagnostics=Diagnostics(profile=True, sample_interval=0.1),
    )
    assert (output / "profile" / "report.html").is_file()
    assert not (tmp_path / "model" / "profile").exists()  # the model archive stays small
    assert (output / "rules.json").is_file()
    assert (tmp_path / "model" / "rules.json").is_file()


def test_only_rank_zero_of_a_torchrun_group_records(tmp_path: Path) -> None:
    from dogclf.diagnostics.session import open_session

    session = open_session(Diagnostics(profile=True, tensorboard=tmp_path / "tb"), tmp_path, environ={"RANK": "1"})
    assert session.callbacks() == []
    session.close()
    assert list(tmp_path.iterdir()) == []
    rank_zero = open_session(None, tmp_path, environ={"RANK": "0"})
    assert len(rank_zero.callbacks()) == 1  # the default rules
    rank_zero.close()

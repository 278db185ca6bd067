"""``profile/report.html``: one self-contained page (plots embedded as PNG, no scripts, no network)."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

from dogclf.diagnostics.profiler.data import RunProfile
from dogclf.diagnostics.profiler.findings import ProfileFinding
from dogclf.diagnostics.profiler.steps import COMPONENTS

__all__ = ["render_report"]

_COLOURS = {
    "data": "#e4572e",
    "forward": "#29335c",
    "backward": "#669bbc",
    "optimizer": "#f3a712",
    "callbacks": "#8e8e93",
}
_STATUS = {"IssuesFound": "issue", "NoIssuesFound": "ok", "NotApplicable": "na", "NotEnoughData": "na"}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1d1d1f}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;width:100%;margin:6px 0} th,td{padding:4px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top} td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tfoot td{font-weight:600;border-top:2px solid #ccc} .muted{color:#666} img{max-width:100%}
.issue{color:#b3261e;font-weight:600} .ok{color:#1b7f3b} .na{color:#777} code{background:#f4f4f4;padding:1px 4px}
.facts td:first-child{color:#666;width:220px}
"""


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _timeline(run: RunProfile) -> str:
    plt = _pyplot()
    names = list(dict.fromkeys(p.name for p in run.phases))
    figure, axis = plt.subplots(figsize=(10, 0.35 * len(names) + 1))
    for index, name in enumerate(names):
        spans = [(s, e - s) for n, s, e in run.intervals if n == name]
        axis.broken_barh(spans, (index - 0.4, 0.8), color="#29335c")
    axis.set_yticks(range(len(names)), names)
    axis.invert_yaxis()
    axis.set_xlim(0, max(run.wall, 1e-3))
    axis.set_xlabel("seconds since the run started")
    axis.grid(axis="x", alpha=0.3)
    return _png(figure)


def _step_plot(run: RunProfile) -> str:
    plt = _pyplot()
    steps = run.steps
    bins = max(1, math.ceil(len(steps) / 400))
    groups = [steps[i : i + bins] for i in range(0, len(steps), bins)]
    figure, axis = plt.subplots(figsize=(10, 3))
    x = [group[0].step for group in groups]
    bottom = [0.0] * len(groups)
    for component in COMPONENTS:
        heights = [1000 * sum(getattr(s, component) for s in g) / len(g) for g in groups]
        axis.bar(x, heights, bottom=bottom, width=bins * 0.9, color=_COLOURS[component], label=component)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axis.set_xlabel("training step" + (f" (mean of {bins} steps per bar)" if bins > 1 else ""))
    axis.set_ylabel("ms")
    axis.legend(ncol=4, loc="upper right", fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return _png(figure)


def _system_plot(run: RunProfile) -> str:
    plt = _pyplot()
    samples = run.samples
    rows = 3 if run.has_gpu else 2
    figure, axes = plt.subplots(rows, 1, figsize=(10, 2.2 * rows), sharex=True)
    t = [s.t for s in samples]
    cores = len(samples[0].cpu) if samples else 0
    for core in range(cores):
        axes[0].plot(t, [s.cpu[core] if core < len(s.cpu) else 0 for s in samples], lw=0.6, alpha=0.35, color="#669bbc")
    axes[0].plot(t, [s.cpu_total for s in samples], lw=1.8, color="#29335c", label=f"all {cores} cores (thin: each)")
    axes[0].plot(t, [s.process_cpu for s in samples], lw=1.2, color="#f3a712", label="this process")
    axes[0].plot(t, [s.iowait for s in samples], lw=1, color="#e4572e", label="I/O wait")
    axes[0].set_ylabel("CPU %")
    axes[0].set_ylim(0, 105)
    axes[0].legend(fontsize=8, loc="upper right")
    axes[1].plot(t, [s.memory for s in samples], color="#29335c", label="system memory %")
    twin = axes[1].twinx()
    twin.plot(t, [s.rss_gb for s in samples], color="#f3a712", label="this process, GiB")
    axes[1].set_ylabel("memory %")
    twin.set_ylabel("GiB")
    axes[1].legend(fontsize=8, loc="upper left")
    twin.legend(fontsize=8, loc="upper right")
    if run.has_gpu:
        axes[2].plot(t, [max(s.gpu) if s.gpu else math.nan for s in samples], label="GPU utilisation %")
        axes[2].plot(t, [max(s.gpu_memory) if s.gpu_memory else math.nan for s in samples], label="GPU memory %")
        axes[2].set_ylim(0, 105)
        axes[2].legend(fontsize=8, loc="upper right")
    for axis in axes:
        for index, (start, end) in enumerate(sorted({(s, e) for _, s, e in run.intervals})):
            if end - start > run.wall / 200:
                axis.axvspan(start, end, color="#000", alpha=0.04 if index % 2 else 0.08, lw=0)
        axis.grid(alpha=0.3)
    for name, start, end in run.intervals:
        if end - start > run.wall / 12:
            axes[0].text((start + end) / 2, 101, name, ha="center", va="bottom", fontsize=7, color="#444")
    axes[-1].set_xlabel("seconds since the run started")
    axes[-1].set_xlim(0, max(run.wall, 1e-3))
    return _png(figure)


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    table_id: str,
    numeric: set[int],
    foot: Sequence[str] | None = None,
) -> str:
    head = "".join(f'<th class="{"num" if i in numeric else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"num" if i in numeric else ""}">{cell}</td>' for i, cell in enumerate(row))
        + "</tr>"
        for row in rows
    )
    tfoot = ""
    if foot is not None:
        tfoot = (
            "<tfoot><tr>"
            + "".join(f'<td class="{"num" if i in numeric else ""}">{cell}</td>' for i, cell in enumerate(foot))
            + "</tr></tfoot>"
        )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>{tfoot}</table>'


def _facts(run: RunProfile) -> str:
    facts = {
        **run.info,
        "device": run.device,
        "trains": "the head, on backbone features" if run.head_only else "through the backbone, on images",
        "training steps": len(run.steps),
        "logical CPUs": run.cpu_count,
        "system samples": f"{len(run.samples)}",
    }
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    return f'<table class="facts" id="info">{rows}</table>'


def _phase_section(run: RunProfile) -> str:
    wall = run.wall or 1.0
    rows = [
        [html.escape(p.name), f'<span class="seconds">{p.seconds:.3f}</span>', f"{100 * p.seconds / wall:.1f}%"]
        for p in run.phases
    ]
    outside = run.wall - run.phase_total
    foot = [
        "all phases",
        f'<span id="phase-total">{run.phase_total:.3f}</span>',
        f"{100 * run.phase_total / wall:.1f}%",
    ]
    return (
        "<h2>Time per phase</h2>"
        + _table(["phase", "seconds", "of wall time"], rows, table_id="phases", numeric={1, 2}, foot=foot)
        + f'<p>Wall time <b id="wall">{run.wall:.3f}</b> s; outside any phase {outside:.3f} s. Validation and the '
        "per-epoch checkpoint are split out of the training phase. A phase's time excludes phases inside it.</p>"
        + f'<img alt="phases over time" src="{_timeline(run)}">'
    )


def _step_section(run: RunProfile) -> str:
    if not run.steps:
        return "<h2>Per-step breakdown</h2><p>No training steps ran.</p>"
    rows = [
        [
            html.escape(str(r["component"])),
            f"{r['seconds']:.3f}",
            f"{r['mean_ms']:.2f}",
            f"{r['median_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{100 * r['share']:.1f}%",
        ]
        for r in run.step_stats()
    ]
    explain = (
        "<p>data wait: until the loader hands over the batch; forward: to the device, forward pass and loss; "
        "backward: zero_grad and backward(); optimizer: the step and its metrics; callbacks: the training rules, "
        "TensorBoard and smdebug at those points"
        + (" (each boundary synchronises the GPU)" if run.device.startswith("cuda") else "")
        + ".</p>"
    )
    return (
        "<h2>Per-step breakdown</h2>"
        + _table(
            ["component", "seconds", "mean ms", "median ms", "p95 ms", "of step time"],
            rows,
            table_id="steps",
            numeric={1, 2, 3, 4, 5},
        )
        + explain
        + f'<img alt="step times" src="{_step_plot(run)}">'
    )


def _findings_section(findings: Sequence[ProfileFinding]) -> str:
    rows = [
        [
            f'<a href="{html.escape(f.documentation)}">{html.escape(f.rule)}</a>',
            f'<span class="{_STATUS.get(f.status, "na")}">{html.escape(f.status)}</span>',
            html.escape(f.detail),
            html.escape(f.advice),
        ]
        for f in findings
    ]
    return "<h2>Findings</h2>" + _table(
        ["rule", "status", "measured", "what to change"], rows, table_id="findings", numeric=set()
    )


def _rules_section(run: RunProfile) -> str:
    if not run.rule_findings:
        return "<h2>Training rules</h2><p>No training rule fired.</p>"
    lines = "".join(f"<li><code>{html.escape(f['line'])}</code></li>" for f in run.rule_findings)
    return f'<h2>Training rules</h2><ul id="rules">{lines}</ul>'


def _operator_section(run: RunProfile) -> str:
    if not run.operators:
        return "<h2>Top operators</h2><p>The torch.profiler window recorded no operators.</p>"
    device = any(o.self_device_us for o in run.operators)
    rows = [
        [html.escape(o.name), str(o.calls), f"{o.self_cpu_us / 1000:.2f}", f"{o.cpu_us / 1000:.2f}"]
        + ([f"{o.self_device_us / 1000:.2f}"] if device else [])
        for o in run.operators
    ]
    headers = ["operator", "calls", "self CPU ms", "CPU ms (with children)"] + (["self GPU ms"] if device else [])
    steps = run.recorded_steps
    window = f"steps {steps[0]}-{steps[-1]}" if steps else "no steps"
    return f"<h2>Top operators ({html.escape(window)}, torch.profiler)</h2>" + _table(
        headers, rows, table_id="operators", numeric=set(range(1, len(headers)))
    )


def _files_section(run: RunProfile) -> str:
    traces = "".join(f"<li><code>{html.escape(p.name)}</code></li>" for p in run.trace_files) or "<li>none</li>"
    return (
        "<h2>Trace and data</h2><ul>" + traces + '</ul><p>Open a trace in <a href="https://ui.perfetto.dev">'
        "Perfetto</a> or <code>chrome://tracing</code>, or in TensorBoard with the PyTorch profiler plugin "
        "(<code>pip install torch-tb-profiler; tensorboard --logdir profile/trace</code>). Every number on this page "
        "is in <code>profile.json</code>.</p>"
    )


def render_report(run: RunProfile, findings: Sequence[ProfileFinding]) -> str:
    """The report page for ``run`` and its ``findings``."""
    system = (
        f'<h2>Utilisation over time</h2><img alt="system use" src="{_system_plot(run)}">'
        if run.samples
        else "<h2>Utilisation over time</h2><p>No system samples (the run was shorter than one interval).</p>"
    )
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>dogclf training profile</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>dogclf training profile</h1>",
        f'<p class="muted">{html.escape(str(run.info.get("model directory", "")))}</p>',
        _facts(run),
        _findings_section(findings),
        _phase_section(run),
        _step_section(run),
        system,
        _operator_section(run),
        _rules_section(run),
        _files_section(run),
        "</body></html>",
    ]
    return "\n".join(parts)

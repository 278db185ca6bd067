"""Debugging and profiling a training run, on this machine and in SageMaker jobs.

==========================  ===========================================================================================
module                      what it holds
==========================  ===========================================================================================
``session``                 :class:`Diagnostics` (what ``train()`` watches) and the session that runs it for one call
``phases``                  wall time per ``train()`` step (``@phase``), nested phases excluded
``rules``                   SageMaker Debugger's built-in rules as loop callbacks: where a rule looks at gradients is
                            ``rules/tensors.py``, at the loss ``rules/loss.py``, at labels ``rules/data.py``
``profiler``                ``--profile``: system sampling, step timing, a torch.profiler window, the HTML report
``tensorboard``             ``--tensorboard DIR``: scalars
``smdebug_hook``            SageMaker Debugger's smdebug hook driven by the loop (``--smdebug-out``, or a job's config)
``smdebug_compat``          the one place smdebug is imported, with its numpy and protobuf shims
``sagemaker_requests``      CreateTrainingJob fragments: DebugHookConfig, rules, ProfilerConfig, TensorBoard output
``cli_args``                the ``dogclf train`` options
``errors``                  the errors of this package
==========================  ===========================================================================================

Names are imported lazily, so ``import dogclf.diagnostics`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dogclf._lazy import lazy_exports

_EXPORTS = {
    "Diagnostics": "dogclf.diagnostics.session",
    "DiagnosticsSession": "dogclf.diagnostics.session",
    "open_session": "dogclf.diagnostics.session",
    "Finding": "dogclf.diagnostics.rules",
    "Rule": "dogclf.diagnostics.rules",
    "RuleSet": "dogclf.diagnostics.rules",
    "BUILTIN_RULES": "dogclf.diagnostics.rules",
    "make_rules": "dogclf.diagnostics.rules",
    "LossNotDecreasing": "dogclf.diagnostics.rules",
    "Overfit": "dogclf.diagnostics.rules",
    "Overtraining": "dogclf.diagnostics.rules",
    "VanishingGradient": "dogclf.diagnostics.rules",
    "ExplodingTensor": "dogclf.diagnostics.rules",
    "WeightUpdateRatio": "dogclf.diagnostics.rules",
    "PoorWeightInitialization": "dogclf.diagnostics.rules",
    "ClassImbalance": "dogclf.diagnostics.rules",
    "StalledTrainingRule": "dogclf.diagnostics.rules",
    "Profiler": "dogclf.diagnostics.profiler",
    "TensorBoardLogger": "dogclf.diagnostics.tensorboard",
    "SmdebugHook": "dogclf.diagnostics.smdebug_hook",
}

__all__ = [
    "BUILTIN_RULES",
    "ClassImbalance",
    "Diagnostics",
    "DiagnosticsSession",
    "ExplodingTensor",
    "Finding",
    "LossNotDecreasing",
    "Overfit",
    "Overtraining",
    "PoorWeightInitialization",
    "Profiler",
    "Rule",
    "RuleSet",
    "SmdebugHook",
    "StalledTrainingRule",
    "TensorBoardLogger",
    "VanishingGradient",
    "WeightUpdateRatio",
    "make_rules",
    "open_session",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


if TYPE_CHECKING:
    from dogclf.diagnostics.profiler import Profiler
    from dogclf.diagnostics.rules import (
        BUILTIN_RULES,
        ClassImbalance,
        ExplodingTensor,
        Finding,
        LossNotDecreasing,
        Overfit,
        Overtraining,
        PoorWeightInitialization,
        Rule,
        RuleSet,
        StalledTrainingRule,
        VanishingGradient,
        WeightUpdateRatio,
        make_rules,
    )
    from dogclf.diagnostics.session import Diagnostics, DiagnosticsSession, open_session
    from dogclf.diagnostics.smdebug_hook import SmdebugHook
    from dogclf.diagnostics.tensorboard import TensorBoardLogger

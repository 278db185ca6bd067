"""The Debugger, Profiler and TensorBoard fragments of a SageMaker ``CreateTrainingJob`` request, as plain dicts.

``dogclf sagemaker train --debugger`` / ``--tensorboard`` merge these into the request (boto3's shapes, as
``sagemaker.core.resources.TrainingJob.create`` takes them after conversion). Built-in rule images come from the
SageMaker SDK's own table (``sagemaker.core.debugger.get_rule_container_image_uri``) and rule configurations from
``smdebug_rulesconfig``, so names and collections are the platform's. Only the rule images need the SDK
(``dogclf[sagemaker]``); nothing here calls AWS.

SageMaker Debugger is closed to new customers since 2026-07-30 (existing ones keep it) and its Profiler ends on
2027-06-30. :func:`debugger_unavailable_message` says what to do when an account cannot use it: dogclf's own rules,
profiler and TensorBoard logging run inside the training container either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dogclf.diagnostics.errors import MissingExtraError

__all__ = [
    "DEBUGGER_UNAVAILABLE",
    "JOB_RULES",
    "debug_hook_config",
    "debug_rule_configurations",
    "debugger_request",
    "debugger_unavailable_message",
    "is_debugger_unavailable",
    "profiler_config",
    "profiler_rule_configurations",
    "tensorboard_output_config",
]

# The built-in rules that read what dogclf's hook saves (losses, weights, biases, gradients).
JOB_RULES = (
    "LossNotDecreasing",
    "Overfit",
    "Overtraining",
    "VanishingGradient",
    "ExplodingTensor",
    "StalledTrainingRule",
)
HOOK_COLLECTIONS = ("losses", "weights", "biases", "gradients")
TENSORS_LOCAL_PATH = "/opt/ml/output/tensors"
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"

DEBUGGER_UNAVAILABLE = (
    "This AWS account cannot use SageMaker Debugger: it is closed to new customers since 2026-07-30 (existing "
    "customers keep it), and CreateTrainingJob refused the Debugger settings{reason}. Run the job without "
    "--debugger: dogclf's own rules (the same names, meanings and defaults) run inside the training container anyway, "
    "print `rule=... status=IssuesFound ...` lines to the job's log and write rules.json to its output "
    "(output.tar.gz); --profile writes the profiler report there, and --tensorboard still works."
)
_DEBUGGER_WORDS = ("debugger", "debughookconfig", "debugruleconfiguration", "profilerconfig", "profilerrule")


def _s3(uri: str, what: str) -> str:
    if not uri.startswith("s3://") or len(uri) <= len("s3://"):
        raise ValueError(f"{what} must be an s3:// URI, got {uri!r}")
    return uri.rstrip("/")


def _string(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _rule_configs() -> Any:
    import smdebug_rulesconfig as rule_configs  # installed with the SageMaker SDK

    return rule_configs


def _builtin(name: str) -> dict[str, Any]:
    configs = _rule_configs()
    factories = {n.replace("_", ""): getattr(configs, n) for n in dir(configs) if not n.startswith("_")}
    factory = factories.get(name.lower().replace("_", ""))
    config = factory() if callable(factory) else None
    if not isinstance(config, dict) or "DebugRuleConfiguration" not in config:
        raise ValueError(
            f"{name!r} is not a SageMaker Debugger built-in rule; dogclf attaches: {', '.join(JOB_RULES)}."
        )
    return config


def debug_hook_config(
    s3_output_path: str,
    *,
    save_interval: int = 100,
    collections: Sequence[str] = HOOK_COLLECTIONS,
    rules: Sequence[str] = (),
    local_path: str = TENSORS_LOCAL_PATH,
) -> dict[str, Any]:
    """The ``DebugHookConfig``: where the hook in the container writes tensors, and which.

    Args:
        s3_output_path: Where SageMaker uploads them (``s3://bucket/prefix``).
        save_interval: Save every this many steps.
        collections: Collections the hook saves (dogclf's loop registers the trained module and the loss).
        rules: Built-in rules that will read them; collections they need are added with their own settings.
        local_path: The folder in the container.
    """
    if save_interval < 1:
        raise ValueError(f"save_interval must be >= 1, got {save_interval!r}")
    chosen: dict[str, dict[str, str]] = {name: {"save_interval": str(save_interval)} for name in collections}
    for rule in rules:
        for collection in _builtin(rule).get("CollectionConfigurations", []):
            chosen.setdefault(collection["CollectionName"], dict(collection.get("CollectionParameters", {})))
    return {
        "LocalPath": local_path,
        "S3OutputPath": _s3(s3_output_path, "The Debugger output path"),
        "HookParameters": {"save_interval": str(save_interval)},
        "CollectionConfigurations": [
            {"CollectionName": name, "CollectionParameters": parameters} for name, parameters in chosen.items()
        ],
    }


def _rule_image(name: str, region: str) -> str:
    try:
        from sagemaker.core.debugger import get_rule_container_image_uri
    except ImportError as exc:
        raise MissingExtraError(
            f'The Debugger rule images come from the SageMaker SDK: pip install "dogclf[sagemaker]" ({exc})'
        ) from exc
    return get_rule_container_image_uri(name, region)


def debug_rule_configurations(
    region: str,
    rules: Sequence[str] = JOB_RULES,
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    instance_type: str | None = None,
    volume_size_in_gb: int | None = None,
) -> list[dict[str, Any]]:
    """The ``DebugRuleConfigurations``: SageMaker's built-in rules, evaluated by its rule containers.

    Args:
        region: The job's AWS region (rule images are per region).
        rules: Built-in rule names.
        params: Parameter overrides by rule name, e.g. ``{"Overfit": {"patience": 2}}`` (sent as strings).
        instance_type: Instance for the rule containers (SageMaker's default when ``None``).
        volume_size_in_gb: Their volume (SageMaker's default when ``None``).
    """
    unknown = sorted(set(params or {}) - set(rules))
    if unknown:
        raise ValueError(f"Parameters for rules that are not attached: {', '.join(unknown)}.")
    configurations = []
    for name in rules:
        base = _builtin(name)["DebugRuleConfiguration"]
        parameters = {
            **base.get("RuleParameters", {}),
            **{k: _string(v) for k, v in (params or {}).get(name, {}).items()},
        }
        configuration: dict[str, Any] = {
            "RuleConfigurationName": base["RuleConfigurationName"],
            "RuleEvaluatorImage": _rule_image(name, region),
            "RuleParameters": parameters,
        }
        if instance_type is not None:
            configuration["InstanceType"] = instance_type
        if volume_size_in_gb is not None:
            configuration["VolumeSizeInGB"] = volume_size_in_gb
        configurations.append(configuration)
    return configurations


def profiler_config(s3_output_path: str, *, interval_ms: int = 500) -> dict[str, Any]:
    """The ``ProfilerConfig``: system monitoring every ``interval_ms`` (SageMaker's default 500).

    Framework profiling is left off: SageMaker deprecated it from PyTorch 2.0; ``dogclf train --profile`` records
    torch.profiler itself.
    """
    if interval_ms not in (100, 200, 500, 1000, 5000, 60000):
        raise ValueError(f"SageMaker samples every 100, 200, 500, 1000, 5000 or 60000 ms, not {interval_ms!r}")
    return {
        "S3OutputPath": _s3(s3_output_path, "The Profiler output path"),
        "ProfilingIntervalInMilliseconds": interval_ms,
        "DisableProfiler": False,
    }


def profiler_rule_configurations(
    region: str, rules: Sequence[str] = ("ProfilerReport",), *, params: Mapping[str, Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The ``ProfilerRuleConfigurations`` (by default SageMaker's ProfilerReport, which runs all its profiler rules)."""
    configs = _rule_configs()
    configurations = []
    for name in rules:
        rule_class = getattr(configs, name, None)
        if not isinstance(rule_class, type):
            raise ValueError(f"{name!r} is not a SageMaker profiler rule (e.g. ProfilerReport, CPUBottleneck).")
        overrides = {k: _string(v) for k, v in (params or {}).get(name, {}).items()}
        configurations.append(
            {
                "RuleConfigurationName": name,
                "RuleEvaluatorImage": _rule_image(name, region),
                "RuleParameters": {"rule_to_invoke": name, **overrides},
            }
        )
    return configurations


def tensorboard_output_config(s3_output_path: str, *, local_path: str = TENSORBOARD_LOCAL_PATH) -> dict[str, Any]:
    """The ``TensorBoardOutputConfig``: the container's TensorBoard folder and where SageMaker uploads it.

    In the job, dogclf finds the folder in ``/opt/ml/input/config/tensorboardoutputconfig.json`` and logs there.
    """
    return {"LocalPath": local_path, "S3OutputPath": _s3(s3_output_path, "The TensorBoard output path")}


def debugger_request(
    region: str,
    s3_output_path: str,
    *,
    rules: Sequence[str] = JOB_RULES,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    save_interval: int = 100,
    profiler: bool = True,
) -> dict[str, Any]:
    """All Debugger fragments of a request for ``--debugger``, keyed as ``CreateTrainingJob`` names them.

    Tensors go to ``<s3_output_path>/debug-output``, profiler data to ``<s3_output_path>/profiler-output``.
    """
    base = _s3(s3_output_path, "The job's output path")
    request: dict[str, Any] = {
        "DebugHookConfig": debug_hook_config(f"{base}/debug-output", save_interval=save_interval, rules=rules),
        "DebugRuleConfigurations": debug_rule_configurations(region, rules, params=params),
    }
    if profiler:
        request["ProfilerConfig"] = profiler_config(f"{base}/profiler-output")
        request["ProfilerRuleConfigurations"] = profiler_rule_configurations(region)
    return request


def is_debugger_unavailable(error: BaseException) -> bool:
    """Whether a failed ``CreateTrainingJob`` was refused because of its Debugger or Profiler settings."""
    response = getattr(error, "response", None)
    code = response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""
    text = str(error).lower().replace("_", "")
    refused = code in ("ValidationException", "AccessDeniedException", "AccessDenied") or "denied" in text
    return refused and any(word in text for word in _DEBUGGER_WORDS)


def debugger_unavailable_message(error: BaseException | str | None = None) -> str:
    """What to tell a user whose account cannot use Debugger (``error``: what AWS answered, quoted)."""
    reason = f" (AWS said: {error})" if error else ""
    return DEBUGGER_UNAVAILABLE.format(reason=reason)

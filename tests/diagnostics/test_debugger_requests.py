"""The CreateTrainingJob fragments for ``dogclf sagemaker train --debugger`` / ``--tensorboard``, checked against
botocore's own model of the request, and the message for accounts that cannot use Debugger."""

from __future__ import annotations

from typing import Any

import pytest

from dogclf.diagnostics.sagemaker_requests import (
    JOB_RULES,
    debug_hook_config,
    debug_rule_configurations,
    debugger_request,
    debugger_unavailable_message,
    is_debugger_unavailable,
    profiler_config,
    tensorboard_output_config,
)

botocore_session = pytest.importorskip("botocore.session", reason="botocore is not installed (dogclf[sagemaker])")
pytest.importorskip("sagemaker.core.debugger", reason="the SageMaker SDK is not installed (dogclf[sagemaker])")


def _validate(fragments: dict[str, Any]) -> None:
    from botocore.validate import ParamValidator

    operation = botocore_session.get_session().get_service_model("sagemaker").operation_model("CreateTrainingJob")
    request = {
        "TrainingJobName": "dogclf-test",
        "AlgorithmSpecification": {"TrainingImage": "image", "TrainingInputMode": "File"},
        "RoleArn": "arn:aws:iam::123456789012:role/dogclf",
        "OutputDataConfig": {"S3OutputPath": "s3://bucket/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        **fragments,
    }
    report = ParamValidator().validate(request, operation.input_shape)
    assert not report.has_errors(), report.generate_report()


def test_debugger_fragments_are_a_valid_create_training_job_request() -> None:
    fragments = debugger_request("eu-west-1", "s3://bucket/jobs/run-1/", params={"Overfit": {"patience": 2}})
    fragments["TensorBoardOutputConfig"] = tensorboard_output_config("s3://bucket/jobs/run-1/tensorboard")
    _validate(fragments)
    hook = fragments["DebugHookConfig"]
    assert hook["S3OutputPath"] == "s3://bucket/jobs/run-1/debug-output"
    assert hook["LocalPath"] == "/opt/ml/output/tensors"
    assert [c["CollectionName"] for c in hook["CollectionConfigurations"]] == [
        "losses",
        "weights",
        "biases",
        "gradients",
    ]
    rules = {r["RuleConfigurationName"]: r for r in fragments["DebugRuleConfigurations"]}
    assert list(rules) == list(JOB_RULES)
    assert rules["Overfit"]["RuleParameters"] == {"rule_to_invoke": "Overfit", "patience": "2"}
    image = "929884845733.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-debugger-rules:latest"  # the SDK's table
    assert {r["RuleEvaluatorImage"] for r in rules.values()} == {image}
    assert fragments["ProfilerConfig"] == {
        "S3OutputPath": "s3://bucket/jobs/run-1/profiler-output",
        "ProfilingIntervalInMilliseconds": 500,
        "DisableProfiler": False,
    }
    assert fragments["ProfilerRuleConfigurations"][0]["RuleParameters"] == {"rule_to_invoke": "ProfilerReport"}
    assert fragments["TensorBoardOutputConfig"]["LocalPath"] == "/opt/ml/output/tensorboard"


def test_rules_bring_the_collections_they_read() -> None:
    hook = debug_hook_config("s3://b/p", collections=("losses",), rules=("PoorWeightInitialization",))
    names = {c["CollectionName"]: c["CollectionParameters"] for c in hook["CollectionConfigurations"]}
    assert names["losses"] == {"save_interval": "100"}
    assert names["relu_input"]["include_regex"] == ".*relu_input"  # from smdebug_rulesconfig


def test_bad_fragments_say_what_would_work() -> None:
    with pytest.raises(ValueError, match="'Overfitt' is not a SageMaker Debugger built-in rule; dogclf attaches: Loss"):
        debug_rule_configurations("us-east-1", ["Overfitt"])
    with pytest.raises(ValueError, match="must be an s3:// URI, got '/tmp/x'"):
        debug_hook_config("/tmp/x")
    with pytest.raises(ValueError, match="Parameters for rules that are not attached: ClassImbalance"):
        debug_rule_configurations("us-east-1", ["Overfit"], params={"ClassImbalance": {"samples": 5}})
    with pytest.raises(ValueError, match="every 100, 200, 500, 1000, 5000 or 60000 ms"):
        profiler_config("s3://b/p", interval_ms=300)


def test_accounts_without_debugger_get_a_clear_message() -> None:
    from botocore.exceptions import ClientError

    refused = ClientError(
        {"Error": {"Code": "ValidationException", "Message": "SageMaker Debugger is not available for this account"}},
        "CreateTrainingJob",
    )
    other = ClientError({"Error": {"Code": "ValidationException", "Message": "Bad instance type"}}, "CreateTrainingJob")
    assert is_debugger_unavailable(refused)
    assert not is_debugger_unavailable(other)
    message = debugger_unavailable_message(refused)
    assert "closed to new customers since 2026-07-30" in message
    assert "Run the job without --debugger" in message
    assert "rules.json" in message
    assert "AWS said: An error occurred (ValidationException)" in message

"""The IAM policies allow exactly what the pipelines' own requests need, evaluated by a real policy evaluator (moto's
IAM access-control evaluator), and deny the destructive actions on anything outside the project's names."""

from __future__ import annotations

import json

import pytest

from tasks.common.settings import load_settings
from tasks.preflight import iam
from tasks.preflight.requests import required_accesses

ACCOUNT = "123456789012"
ENV = {
    "PIPELINE_BACKEND": "sagemaker",
    "PIPELINE_STORAGE_URI": "s3://acme-ml/llava",
    "PIPELINE_SAGEMAKER_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/llava-sagemaker-execution",
    "PIPELINE_ALERT_SNS_TOPIC_ARN": f"arn:aws:sns:us-east-1:{ACCOUNT}:llava-alerts",
    "PIPELINE_INPUT_ROOTS": "s3://drop-bucket/raw",
    "PIPELINE_KMS_KEY_ARNS": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
}
SETTINGS = load_settings(ENV)


def allows(policy: dict, access: iam.Access) -> bool:
    from moto.iam.access_control import IAMPolicy, PermissionResult

    result = IAMPolicy(json.dumps(policy)).is_action_permitted(
        access.action, access.resource, incoming_condition_values=access.conditions or None
    )
    return result == PermissionResult.PERMITTED


@pytest.fixture(scope="module")
def policies() -> dict[str, dict]:
    values = iam.PolicyValues.from_settings(SETTINGS, ACCOUNT)
    return {principal: iam.render_policy(principal, values) for principal in iam.POLICY_FILES}


def test_every_access_the_requests_imply_is_allowed(policies):
    needed = required_accesses(SETTINGS, ACCOUNT)
    assert len(needed) > 60  # the derivation found the requests' accesses
    denied = [
        f"{a.principal}: {a.action} on {a.resource} ({a.why})" for a in needed if not allows(policies[a.principal], a)
    ]
    assert denied == [], "the IAM policies in include/aws/ deny what the code needs:\n" + "\n".join(denied)


def test_the_derivation_follows_the_requests():
    """Transform input and output are read and written by the execution role (CreateTransformJob has no role field:
    SageMaker uses the model's), under backlog/; SageMaker never writes predictions/."""
    needed = required_accesses(SETTINGS, ACCOUNT)
    execution = {
        (a.action, a.resource.split("/", 2)[-1].split("/")[0])
        for a in needed
        if a.principal == "execution" and a.resource.startswith("arn:aws:s3:::acme-ml/")
    }
    assert {
        ("s3:GetObject", "backlog"),
        ("s3:PutObject", "backlog"),
        ("s3:PutObject", "models"),
        ("s3:GetObject", "datasets"),
        ("s3:GetObject", "serving"),
    } <= execution
    assert not {(action, "predictions") for action in ("s3:PutObject", "s3:GetObject")} & execution
    assert iam.Access("airflow", "sns:Publish", ENV["PIPELINE_ALERT_SNS_TOPIC_ARN"], "") in needed
    assert any(a.resource == "arn:aws:s3:::drop-bucket/raw/object" and a.action == "s3:GetObject" for a in needed)
    assert {a.principal for a in needed if a.action == "kms:Decrypt"} == {"airflow", "execution"}


def test_destructive_actions_outside_the_project_are_denied(policies):
    probes = iam.destructive_probes(SETTINGS, ACCOUNT, SETTINGS.region)
    allowed = [f"{a.principal}: {a.action} on {a.resource}" for a in probes if allows(policies[a.principal], a)]
    assert allowed == [], "least privilege: these must be denied:\n" + "\n".join(allowed)


def test_optional_statements_follow_the_settings():
    bare = load_settings(
        {
            k: v
            for k, v in ENV.items()
            if k not in ("PIPELINE_ALERT_SNS_TOPIC_ARN", "PIPELINE_INPUT_ROOTS", "PIPELINE_KMS_KEY_ARNS")
        }
    )
    doc = iam.render_policy("airflow", iam.PolicyValues.from_settings(bare, ACCOUNT))
    sids = {s["Sid"] for s in doc["Statement"]}
    assert not sids & {"AlertTopic", "InputRootBuckets", "InputRootsReadOnly", "EncryptedStorageAndTopic"}
    assert "ACCOUNT_ID" not in json.dumps(doc) and "STORAGE_BUCKET" not in json.dumps(doc)

"""The committed IAM policies (include/aws/) allow every AWS API the code calls.

Direct boto3 calls are found by name: every operation of the services we use whose snake_case name appears in
tasks/ or dags/ as a call (`.create_training_job(`) or a string (`"list_models"`, for paginators and getattr).
What the Amazon provider's operators and the services call on our behalf is listed by hand below, with where it
comes from.
"""

from __future__ import annotations

import json
import re

import botocore.session
from botocore import xform_name

from tests.conftest import REPO_ROOT

POLICIES = REPO_ROOT / "include" / "aws"
IAM_PREFIX = {
    "sagemaker": "sagemaker",
    "sagemaker-runtime": "sagemaker",
    "application-autoscaling": "application-autoscaling",
}
ON_OUR_BEHALF = {
    # airflow/providers/amazon/aws/operators/sagemaker.py and hooks/sagemaker.py
    "SageMakerTrainingOperator": [
        "sagemaker:CreateTrainingJob",
        "sagemaker:DescribeTrainingJob",
        "sagemaker:ListTrainingJobs",
    ],
    "SageMakerModelOperator": ["sagemaker:CreateModel", "sagemaker:DescribeModel"],
    "SageMakerEndpointConfigOperator": ["sagemaker:CreateEndpointConfig", "sagemaker:DescribeEndpointConfig"],
    "SageMakerEndpointOperator": ["sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint", "sagemaker:DescribeEndpoint"],
    "SnsNotifier": ["sns:Publish"],  # airflow/providers/amazon/aws/notifications/sns.py (alerts)
    # tasks/serving/sagemaker.py: getattr(sm, f"describe_{kind}") and the endpoint waiters (DescribeEndpoint)
    "describe_{kind}": ["sagemaker:DescribeModel", "sagemaker:DescribeEndpointConfig", "sagemaker:DescribeEndpoint"],
    # SageMakerHook.check_training_config -> S3Hook.check_for_bucket (HeadBucket) / check_for_prefix (ListObjectsV2)
    "check_training_config": ["s3:ListBucket", "s3:GetBucketLocation"],
    # Tags on create requests need AddTags; RegisterScalableTarget on a SageMaker variant checks these for the
    # caller, creates the service-linked role on first use, and target tracking manages CloudWatch alarms.
    "Tags": ["sagemaker:AddTags"],
    "register_scalable_target": [
        "sagemaker:DescribeEndpoint",
        "sagemaker:DescribeEndpointConfig",
        "sagemaker:UpdateEndpointWeightsAndCapacities",
        "iam:CreateServiceLinkedRole",
        "cloudwatch:PutMetricAlarm",
        "cloudwatch:DescribeAlarms",
        "cloudwatch:DeleteAlarms",
    ],
    "role_arn": ["iam:PassRole"],  # every create request that names the execution role
    "ObjectStoragePath": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"],  # storage root
    # tasks/backlog/sagemaker.py: the transform operator creates or attaches to the job; the hook checks that the
    # input prefix exists (S3Hook.check_for_prefix: ListObjectsV2) before CreateTransformJob
    "SageMakerTransformOperator": [
        "sagemaker:CreateTransformJob",
        "sagemaker:DescribeTransformJob",
        "sagemaker:ListTransformJobs",
        "sagemaker:StopTransformJob",
        "s3:ListBucket",
    ],
}


def allowed(name: str) -> set[str]:
    doc = json.loads((POLICIES / name).read_text())
    return {action for st in doc["Statement"] if st["Effect"] == "Allow" for action in st["Action"]}


def sources() -> str:
    return "\n".join(path.read_text() for folder in ("tasks", "dags") for path in (REPO_ROOT / folder).rglob("*.py"))


def called_operations(text: str) -> set[str]:
    session = botocore.session.get_session()
    actions = set()
    for service, prefix in IAM_PREFIX.items():
        for operation in session.get_service_model(service).operation_names:
            snake = xform_name(operation)
            if "_" not in snake:  # one-word names ("search") are ordinary words in code
                continue
            if re.search(rf"\.{snake}\(|[\"']{snake}[\"']", text):
                actions.add(f"{prefix}:{operation}")
    return actions


def test_every_api_the_code_calls_is_allowed_for_the_airflow_role():
    text = sources()
    calls = called_operations(text)
    assert {"sagemaker:CreateTrainingJob", "sagemaker:DeleteEndpoint", "sagemaker:InvokeEndpoint",
            "application-autoscaling:PutScalingPolicy"} <= calls  # fmt: skip  # the scan does find calls
    missing = calls - allowed("airflow-role-policy.json")
    assert not missing, f"include/aws/airflow-role-policy.json lacks {sorted(missing)}"


def test_what_the_provider_and_the_services_call_for_us_is_allowed():
    policy, text = allowed("airflow-role-policy.json"), sources()
    for trigger, actions in ON_OUR_BEHALF.items():
        assert set(actions) <= policy, f"{trigger}: {sorted(set(actions) - policy)}"
    for operator in re.findall(r"\b(SageMaker\w+Operator|SnsNotifier)\b", text):
        assert operator in ON_OUR_BEHALF, f"{operator}: list what it calls in ON_OUR_BEHALF"

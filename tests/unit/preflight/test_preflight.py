"""`llava-pipelines preflight` against moto (S3, IAM roles, ECR, SNS, STS) with what moto does not model filled in
as AWS documents it: SimulatePrincipalPolicy evaluated over the role's real policies by moto's IAM evaluator, and
Service Quotas (moto lists no SageMaker quotas) answered from a table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tasks.common.settings import load_settings
from tasks.preflight import checks, iam
from tasks.preflight.requests import build_requests

ACCOUNT = "123456789012"  # moto's
ENV = {
    "PIPELINE_BACKEND": "sagemaker",
    "PIPELINE_STORAGE_URI": "s3://acme-ml/llava",
    "PIPELINE_SAGEMAKER_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/llava-sagemaker-execution",
    "PIPELINE_ALERT_SNS_TOPIC_ARN": f"arn:aws:sns:us-east-1:{ACCOUNT}:llava-alerts",
}
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
AIRFLOW_ROLE = f"arn:aws:iam::{ACCOUNT}:role/llava-airflow"
SETTINGS = load_settings(ENV)


def simulate(iam_client: Any) -> Any:
    """SimulatePrincipalPolicy as AWS answers it, over the role's inline policies (moto: not implemented)."""
    from moto.iam.access_control import IAMPolicy, PermissionResult

    def handler(context: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        params = context["api_params"]
        role = params["PolicySourceArn"].rsplit("/", 1)[-1]
        names = iam_client.list_role_policies(RoleName=role)["PolicyNames"]
        docs = [iam_client.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"] for n in names]
        context = {e["ContextKeyName"]: e["ContextKeyValues"][0] for e in params.get("ContextEntries", [])}
        results = []
        for action in params["ActionNames"]:
            for resource in params["ResourceArns"]:
                verdicts = [
                    IAMPolicy(json.dumps(d)).is_action_permitted(
                        action, resource, incoming_condition_values=context or None
                    )
                    for d in docs
                ]
                allowed = PermissionResult.PERMITTED in verdicts and PermissionResult.DENIED not in verdicts
                results.append(
                    {
                        "EvalActionName": action,
                        "EvalResourceName": resource,
                        "EvalDecision": "allowed" if allowed else "implicitDeny",
                    }
                )
        return SimpleNamespace(status_code=200), {"EvaluationResults": results, "IsTruncated": False}

    return handler


def keep_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """The call's own parameters, for a before-call handler that answers in AWS's place (it sees only the
    serialized request)."""
    context["api_params"] = params


def quotas(values: dict[str, float]) -> Any:
    """ListServiceQuotas answering from `values` (read at each call: a test may change them)."""

    def handler(**_: Any) -> tuple[Any, dict[str, Any]]:
        listed = [{"QuotaName": name, "Value": value, "ServiceCode": "sagemaker"} for name, value in values.items()]
        return SimpleNamespace(status_code=200), {"Quotas": listed}

    return handler


def needed_quotas() -> dict[str, float]:
    requests = build_requests(SETTINGS)
    return {
        f"{requests.training['ResourceConfig']['InstanceType']} for training job usage": 1.0,
        f"{requests.serving['instance_type']} for endpoint usage": 2.0,
        f"{requests.transforms[0]['TransformResources']['InstanceType']} for transform job usage": 1.0,
    }


@pytest.fixture
def account(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A complete account: bucket, both roles with the rendered policies, both images, the topic, the quotas."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        clients: dict[str, Any] = {}

        def client(service: str) -> Any:
            if service not in clients:
                clients[service] = boto3.client(service, region_name="us-east-1")
                clients[service].meta.events.register("before-parameter-build", keep_params)
                if service == "iam":
                    clients[service].meta.events.register(
                        "before-call.iam.SimulatePrincipalPolicy", simulate(clients[service])
                    )
            return clients[service]

        client("s3").create_bucket(Bucket="acme-ml")
        trust = (iam.POLICY_DIR / iam.TRUST_FILE).read_text()
        values = iam.PolicyValues.from_settings(SETTINGS, ACCOUNT)
        for principal, arn in (("execution", SETTINGS.sagemaker_role_arn), ("airflow", AIRFLOW_ROLE)):
            name = arn.rsplit("/", 1)[-1]
            client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=trust)
            client("iam").put_role_policy(
                RoleName=name, PolicyName="pipelines", PolicyDocument=json.dumps(iam.render_policy(principal, values))
            )
        requests = build_requests(SETTINGS)
        for uri in (
            requests.training["AlgorithmSpecification"]["TrainingImage"],
            requests.serving["model_request"]["PrimaryContainer"]["Image"],
        ):
            registry, _, path = uri.partition("/")
            repository, _, tag = path.partition(":")
            # the images live in AWS's own registry account (moto keeps the registry id on the repository)
            client("ecr").create_repository(registryId=registry.split(".")[0], repositoryName=repository)
            manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "layers": [], "tag": tag}
            client("ecr").put_image(repositoryName=repository, imageTag=tag, imageManifest=json.dumps(manifest))
        client("sns").create_topic(Name="llava-alerts")
        limits = needed_quotas()
        client("service-quotas").meta.events.register("before-call.service-quotas.ListServiceQuotas", quotas(limits))
        yield {"client": client, "quotas": limits}


def test_a_complete_account_is_ready(account, capsys):
    result = checks.run_checks(SETTINGS, account["client"], AIRFLOW_ROLE)
    print(checks.table(result))
    assert [c for c in result if not c.ready] == []
    names = {c.name for c in result}
    assert {
        "storage bucket",
        "execution role trust",
        "airflow role",
        "airflow role permissions",
        "execution role permissions",
        "training image",
        "DJL LMI image",
        "alert topic",
    } <= names
    assert sum(name.startswith("quota: ") for name in names) == 3
    assert "nothing to fix" in checks.table(result)


def test_a_missing_execution_role_and_a_zero_quota_are_named_with_their_fixes(account, capsys):
    client = account["client"]
    client("iam").delete_role_policy(RoleName="llava-sagemaker-execution", PolicyName="pipelines")
    client("iam").delete_role(RoleName="llava-sagemaker-execution")
    account["quotas"]["ml.g5.xlarge for endpoint usage"] = 0.0

    result = checks.run_checks(SETTINGS, client, AIRFLOW_ROLE)
    text = checks.table(result)
    print(text)
    missing = {c.name: c for c in result if not c.ready}
    assert set(missing) == {"execution role", "execution role permissions", "quota: ml.g5.xlarge for endpoint usage"}
    assert "does not exist" in missing["execution role"].detail
    assert iam.TRUST_FILE in missing["execution role"].fix
    assert "0.0 (need 2)" in missing["quota: ml.g5.xlarge for endpoint usage"].detail
    assert "Service Quotas" in missing["quota: ml.g5.xlarge for endpoint usage"].fix


def test_a_role_without_the_backlog_grant_is_denied_exactly_that(account):
    """The old execution-role policy (no backlog/): preflight names the transform input and output."""
    client = account["client"]
    policy = iam.render_policy("execution", iam.PolicyValues.from_settings(SETTINGS, ACCOUNT))
    for statement in policy["Statement"]:
        if isinstance(statement["Resource"], list):
            statement["Resource"] = [r for r in statement["Resource"] if "/backlog/" not in r]
    client("iam").put_role_policy(
        RoleName="llava-sagemaker-execution", PolicyName="pipelines", PolicyDocument=json.dumps(policy)
    )
    [check] = [c for c in checks.run_checks(SETTINGS, client, AIRFLOW_ROLE) if c.name == "execution role permissions"]
    assert not check.ready and "/backlog/" in check.detail and "s3:GetObject" in check.detail

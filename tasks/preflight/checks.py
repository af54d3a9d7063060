"""`llava-pipelines preflight`: a read-only check of a real AWS account before the first run.

Every check reads, none writes: the storage bucket and its region, both roles (they exist, the execution role trusts
SageMaker, and each allows every access the pipelines' own requests need: `iam:SimulatePrincipalPolicy` over the
pairs tasks.preflight.requests derives), the declared training and DJL LMI images in the region's registry, the
Service Quotas of the instance types the requests use, and the alert topic. The result is a table of what is ready
and what is missing, with the fix for each.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from tasks.common.settings import Settings
from tasks.preflight import iam
from tasks.preflight.requests import Requests, build_requests, required_accesses

Clients = Callable[[str], Any]  # service name -> boto3 client


@dataclass(frozen=True)
class Check:
    name: str
    ready: bool
    detail: str
    fix: str = ""


def run_checks(settings: Settings, clients: Clients, airflow_role_arn: str | None = None) -> list[Check]:
    """All checks, in the order a first run needs them; one failing does not stop the others."""
    from botocore.exceptions import BotoCoreError, ClientError

    identity = clients("sts").get_caller_identity()
    account = identity["Account"]
    airflow_role = airflow_role_arn or _role_of(identity["Arn"])
    requests = build_requests(settings)
    steps: dict[str, Callable[[], Iterator[Check]]] = {
        "storage bucket": lambda: _bucket(settings, clients("s3")),
        "roles": lambda: _roles(settings, clients("iam"), airflow_role),
        "permissions": lambda: _permissions(settings, clients("iam"), account, airflow_role),
        "images": lambda: _images(requests, clients("ecr")),
        "quotas": lambda: _quotas(requests, clients("service-quotas")),
        "alert topic": lambda: _topic(settings, clients("sns")),
    }
    checks = [Check("account and region", True, f"account {account}, region {settings.region}, as {identity['Arn']}")]
    for name, step in steps.items():
        try:
            checks += list(step())
        except (ClientError, BotoCoreError) as exc:
            checks.append(Check(name, False, f"could not check: {exc}", "run preflight with read access to it"))
    return checks


def _bucket(settings: Settings, s3: Any) -> Iterator[Check]:
    from botocore.exceptions import ClientError

    bucket = urlparse(settings.storage_uri).netloc
    if not settings.storage_uri.startswith("s3://"):
        yield Check("storage bucket", False, f"{settings.storage_uri} is not s3://", "set PIPELINE_STORAGE_URI")
        return
    try:
        location = s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] or "us-east-1"
    except ClientError as exc:
        yield Check(
            "storage bucket",
            False,
            f"s3://{bucket}: {exc.response['Error']['Code']}",
            f"create the bucket in {settings.region}, or fix PIPELINE_STORAGE_URI",
        )
        return
    same = location == settings.region
    yield Check(
        "storage bucket",
        same,
        f"s3://{bucket} in {location}",
        "" if same else f"use a bucket in {settings.region} or set PIPELINE_REGION={location}",
    )


def _roles(settings: Settings, client: Any, airflow_role: str) -> Iterator[Check]:
    execution = settings.sagemaker_role_arn
    if not execution:
        yield Check(
            "execution role",
            False,
            "PIPELINE_SAGEMAKER_ROLE_ARN is not set",
            f"create it with include/aws/{iam.TRUST_FILE} and {iam.POLICY_FILES['execution']}, then set it",
        )
    else:
        role = _get_role(client, execution)
        if role is None:
            yield Check(
                "execution role",
                False,
                f"{execution} does not exist",
                f"create it with include/aws/{iam.TRUST_FILE} (trust) and {iam.POLICY_FILES['execution']}",
            )
        else:
            trusted = iam.SAGEMAKER_SERVICE in json.dumps(_document(role["AssumeRolePolicyDocument"]))
            yield Check(
                "execution role trust",
                trusted,
                f"{execution} trusts " + ("sagemaker.amazonaws.com" if trusted else "other principals only"),
                "" if trusted else f"set its trust policy to include/aws/{iam.TRUST_FILE}",
            )
    found = _get_role(client, airflow_role) is not None
    yield Check(
        "airflow role",
        found,
        f"{airflow_role} " + ("exists" if found else "does not exist"),
        "" if found else "pass --airflow-role-arn, or run with the Airflow workers' role",
    )


def _permissions(settings: Settings, client: Any, account: str, airflow_role: str) -> Iterator[Check]:
    """SimulatePrincipalPolicy per resource with the actions needed on it and the request's condition values."""
    principals = {"airflow": airflow_role, "execution": settings.sagemaker_role_arn}
    for principal, arn in list(principals.items()):
        if arn and _get_role(client, arn) is None:  # SimulatePrincipalPolicy would fail with NoSuchEntity
            yield Check(f"{principal} role permissions", False, f"not checked: {arn} does not exist", "create it first")
            principals[principal] = ""
    grouped: dict[tuple[str, str, tuple], list[iam.Access]] = defaultdict(list)
    for access in required_accesses(settings, account):
        grouped[(access.principal, access.resource, tuple(sorted(access.conditions.items())))].append(access)
    denied: dict[str, list[str]] = defaultdict(list)
    for (principal, resource, conditions), accesses in grouped.items():
        if not principals[principal]:
            continue
        context = [{"ContextKeyName": k, "ContextKeyValues": [v], "ContextKeyType": "string"} for k, v in conditions]
        result = client.simulate_principal_policy(
            PolicySourceArn=principals[principal],
            ActionNames=sorted({a.action for a in accesses}),
            ResourceArns=[resource],
            ContextEntries=context,
        )
        denied[principal] += [
            f"{r['EvalActionName']} on {resource}"
            for r in result["EvaluationResults"]
            if r["EvalDecision"] != "allowed"
        ]
    for principal, arn in principals.items():
        if not arn:
            continue
        missing = denied[principal]
        needed = sum(len(a) for (who, _, _), a in grouped.items() if who == principal)
        yield Check(
            f"{principal} role permissions",
            not missing,
            f"{needed - len(missing)}/{needed} needed accesses allowed"
            + (f"; denied: {'; '.join(missing[:3])}{' …' if len(missing) > 3 else ''}" if missing else ""),
            f"attach include/aws/{iam.POLICY_FILES[principal]} rendered by `llava-pipelines iam-policies`"
            if missing
            else "",
        )


def _images(requests: Requests, ecr: Any) -> Iterator[Check]:
    from botocore.exceptions import ClientError

    images = {
        "training image": requests.training["AlgorithmSpecification"]["TrainingImage"],
        "DJL LMI image": requests.serving["model_request"]["PrimaryContainer"]["Image"],
    }
    for name, uri in images.items():
        host, _, path = uri.partition("/")
        repository, _, tag = path.partition(":")
        try:
            ecr.describe_images(registryId=host.split(".")[0], repositoryName=repository, imageIds=[{"imageTag": tag}])
        except ClientError as exc:
            yield Check(
                name,
                False,
                f"{uri}: {exc.response['Error']['Code']}",
                "pick a tag this region's registry has (include/images/, include/serving/runtime.json)",
            )
            continue
        yield Check(name, True, f"{uri} exists")


QUOTA_NAMES = {
    "training": "{} for training job usage",
    "endpoint": "{} for endpoint usage",
    "transform": "{} for transform job usage",
}


def _quotas(requests: Requests, quotas: Any) -> Iterator[Check]:
    needed = {
        "training": (
            requests.training["ResourceConfig"]["InstanceType"],
            requests.training["ResourceConfig"]["InstanceCount"],
        ),
        "endpoint": (requests.serving["instance_type"], requests.serving["autoscaling"]["max_instances"]),
        "transform": (
            requests.transforms[0]["TransformResources"]["InstanceType"],
            requests.transforms[0]["TransformResources"]["InstanceCount"],
        ),
    }
    values = {
        q["QuotaName"]: q["Value"]
        for page in quotas.get_paginator("list_service_quotas").paginate(ServiceCode="sagemaker")
        for q in page["Quotas"]
    }
    for use, (instance_type, count) in needed.items():
        name = QUOTA_NAMES[use].format(instance_type)
        value = values.get(name)
        ready = value is not None and value >= count
        yield Check(
            f"quota: {name}",
            ready,
            f"{value if value is not None else 'not listed'} (need {count})",
            "" if ready else f"request {count} in Service Quotas > Amazon SageMaker > {name!r}",
        )


def _topic(settings: Settings, sns: Any) -> Iterator[Check]:
    from botocore.exceptions import ClientError

    arn = settings.alert_sns_topic_arn
    if not arn:
        yield Check(
            "alert topic",
            False,
            "PIPELINE_ALERT_SNS_TOPIC_ARN is not set: failures reach only the log",
            "create an SNS topic, subscribe on-call, set PIPELINE_ALERT_SNS_TOPIC_ARN",
        )
        return
    try:
        sns.get_topic_attributes(TopicArn=arn)
    except ClientError as exc:
        yield Check("alert topic", False, f"{arn}: {exc.response['Error']['Code']}", "create the topic or fix the ARN")
        return
    yield Check("alert topic", True, f"{arn} exists")


def _get_role(client: Any, arn: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return client.get_role(RoleName=arn.rsplit("/", 1)[-1])["Role"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchEntity":
            return None
        raise


def _document(value: Any) -> Any:
    """GetRole returns the trust policy URL-encoded (a string) or, through boto3, already decoded."""
    return json.loads(unquote(value)) if isinstance(value, str) else value


def _role_of(caller_arn: str) -> str:
    """`arn:aws:sts::A:assumed-role/NAME/session` → `arn:aws:iam::A:role/NAME`; a user or role ARN as it is."""
    if ":assumed-role/" in caller_arn:
        account = caller_arn.split(":")[4]
        return f"arn:aws:iam::{account}:role/{caller_arn.split('/')[1]}"
    return caller_arn


def table(checks: list[Check]) -> str:
    """The readable result: one line per check, then the fixes."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  status   detail", f"{'-' * width}  -------  ------"]
    lines += [f"{c.name:<{width}}  {'ready' if c.ready else 'MISSING':<7}  {c.detail}" for c in checks]
    fixes = [f"- {c.name}: {c.fix}" for c in checks if not c.ready and c.fix]
    ready = sum(c.ready for c in checks)
    lines += ["", f"{ready}/{len(checks)} ready" + (":" if fixes else "; nothing to fix"), *fixes]
    return "\n".join(lines)

"""Who needs which AWS access, derived from the requests the code really builds, and the IAM policies rendered for an
account.

Two principals act: the Airflow worker's role (`airflow`: every API call and every storage read/write of a task) and
the SageMaker execution role (`execution`: what training jobs, models and Batch Transform jobs read and write; AWS runs
CreateTransformJob's input and output with the *model's* role, CreateTransformJob has no role field). Each access
comes with the request field it was read from, so a reader can tell why it is needed.

The policy files in include/aws/ are templates: ACCOUNT_ID, STORAGE_BUCKET, STORAGE_PREFIX,
SAGEMAKER_EXECUTION_ROLE_NAME and ALERT_TOPIC_ARN are filled in from the settings; input-root buckets and KMS keys
(`PIPELINE_INPUT_ROOTS`, `PIPELINE_KMS_KEY_ARNS`) add statements of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from tasks.common.settings import INCLUDE_DIR, Settings

Principal = Literal["airflow", "execution"]
POLICY_DIR = INCLUDE_DIR / "aws"
POLICY_FILES: dict[Principal, str] = {
    "airflow": "airflow-role-policy.json",
    "execution": "sagemaker-execution-role-policy.json",
}
TRUST_FILE = "sagemaker-execution-role-trust.json"
SAGEMAKER_SERVICE = "sagemaker.amazonaws.com"
PASS_ROLE_CONDITION = {"iam:PassedToService": SAGEMAKER_SERVICE}
S3_READ = ("s3:GetObject",)
S3_WRITE = ("s3:PutObject", "s3:AbortMultipartUpload")  # s3fs and SageMaker upload large files in parts
ECR_PULL = ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability")
KMS_USE = ("kms:Decrypt", "kms:GenerateDataKey")  # SSE-KMS objects and an encrypted SNS topic


@dataclass(frozen=True)
class Access:
    principal: Principal
    action: str
    resource: str
    why: str = field(compare=False)
    conditions: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def s3_object_arn(uri: str, key: str = "") -> str:
    """`arn:aws:s3:::bucket/prefix/key` for an object below an s3:// URI."""
    parsed = urlparse(uri)
    path = "/".join(part for part in (parsed.path.strip("/"), key) if part)
    return f"arn:aws:s3:::{parsed.netloc}/{path}"


def s3_bucket_arn(uri: str) -> str:
    return f"arn:aws:s3:::{urlparse(uri).netloc}"


def sagemaker_arn(kind: str, name: str, account_id: str, region: str) -> str:
    return f"arn:aws:sagemaker:{region}:{account_id}:{kind}/{name.lower()}"


def ecr_repository_arn(image_uri: str) -> str:
    """`<account>.dkr.ecr.<region>.<suffix>/<repo>:<tag>` → the repository's ARN."""
    host, _, path = image_uri.partition("/")
    account, _, _, region = host.split(".")[:4]
    return f"arn:aws:ecr:{region}:{account}:repository/{path.split(':')[0]}"


def _s3(principal: Principal, actions: tuple[str, ...], uri: str, why: str, key: str = "object") -> list[Access]:
    """Object actions on something below `uri`, plus the bucket listing (s3fs lists before it reads)."""
    prefix = urlparse(uri).path.strip("/")
    listing = Access(principal, "s3:ListBucket", s3_bucket_arn(uri), why, {"s3:prefix": prefix})
    return [listing, *(Access(principal, action, s3_object_arn(uri, key), why) for action in actions)]


def training_accesses(request: dict[str, Any], account_id: str, region: str) -> list[Access]:
    """A CreateTrainingJob request: the worker creates and tags it and passes the role; the job reads its channels
    and source, writes the model, and syncs checkpoints both ways."""
    job = sagemaker_arn("training-job", request["TrainingJobName"], account_id, region)
    source = request["HyperParameters"]["sagemaker_submit_directory"]
    out = [
        Access("airflow", action, job, "CreateTrainingJob")
        for action in ("sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:AddTags")
    ]
    out.append(Access("airflow", "iam:PassRole", request["RoleArn"], "RoleArn", PASS_ROLE_CONDITION))
    out += _s3("airflow", S3_WRITE, source, "sagemaker_submit_directory (prepare_training uploads it)", key="")
    out += _s3("execution", S3_READ, source, "sagemaker_submit_directory", key="")
    for channel in request["InputDataConfig"]:
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
        out += _s3("airflow", (), uri, f"channel {channel['ChannelName']} (the provider checks it exists)")
        out += _s3("execution", S3_READ, uri, f"channel {channel['ChannelName']}")
    model_output = f"{request['OutputDataConfig']['S3OutputPath']}/{request['TrainingJobName']}/output"
    out += _s3("execution", S3_WRITE, model_output, "OutputDataConfig.S3OutputPath")
    checkpoints = request["CheckpointConfig"]["S3Uri"]
    out += _s3("execution", (*S3_READ, *S3_WRITE, "s3:DeleteObject"), checkpoints, "CheckpointConfig.S3Uri")
    return out + _container("training", request["AlgorithmSpecification"]["TrainingImage"], account_id)


def serving_accesses(plan: dict[str, Any], account_id: str, region: str) -> list[Access]:
    """A SageMaker deployment plan (tasks.serving.sagemaker.plan): model, endpoint config and endpoint requests,
    the archive it uploads, and what LMI downloads (`option.model_id` in serving.properties) with the model's
    role."""
    model, endpoint = plan["model_request"], plan["endpoint_request"]
    model_arn = sagemaker_arn("model", model["ModelName"], account_id, region)
    config_arn = sagemaker_arn(
        "endpoint-config", plan["endpoint_config_request"]["EndpointConfigName"], account_id, region
    )
    endpoint_arn = sagemaker_arn("endpoint", endpoint["EndpointName"], account_id, region)
    calls = {
        model_arn: ("CreateModel", "DescribeModel", "DeleteModel", "AddTags", "ListTags"),
        config_arn: ("CreateEndpointConfig", "DescribeEndpointConfig", "DeleteEndpointConfig", "AddTags", "ListTags"),
        endpoint_arn: (
            "CreateEndpoint",
            "UpdateEndpoint",
            "DescribeEndpoint",
            "DeleteEndpoint",
            "AddTags",
            "InvokeEndpoint",
            "UpdateEndpointWeightsAndCapacities",
        ),
    }
    out = [
        Access("airflow", f"sagemaker:{call}", arn, "deploy_endpoint / teardown_endpoint / classify_images")
        for arn, names in calls.items()
        for call in names
    ]
    out.append(Access("airflow", "iam:PassRole", model["ExecutionRoleArn"], "ExecutionRoleArn", PASS_ROLE_CONDITION))
    alarm = f"arn:aws:cloudwatch:{region}:{account_id}:alarm:TargetTracking-endpoint/{endpoint['EndpointName']}-x"
    out += [
        Access("airflow", action, alarm, "target tracking manages the endpoint's alarms for its caller")
        for action in ("cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms")
    ]
    archive = model["PrimaryContainer"]["ModelDataUrl"]
    out += _s3("airflow", S3_WRITE, archive, "package_serving_config writes model.tar.gz", key="")
    out += _s3("execution", S3_READ, archive, "PrimaryContainer.ModelDataUrl", key="")
    model_id = _properties(plan["serving_properties"])["option.model_id"]
    out += _s3("execution", S3_READ, model_id, "serving.properties option.model_id (LMI's s5cmd sync)")
    return out + _container("serving", model["PrimaryContainer"]["Image"], account_id)


def transform_accesses(request: dict[str, Any], account_id: str, region: str) -> list[Access]:
    """A CreateTransformJob request: created by the worker, run with the model's execution role (the request has
    no role), which reads the input prefix and writes the output prefix."""
    job = sagemaker_arn("transform-job", request["TransformJobName"], account_id, region)
    out = [
        Access("airflow", action, job, "CreateTransformJob")
        for action in ("sagemaker:CreateTransformJob", "sagemaker:DescribeTransformJob")
    ]
    source = request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    out += _s3("airflow", (), source, "the provider checks the input prefix exists")
    out += _s3("execution", S3_READ, source, "TransformInput (read with the model's execution role)")
    out += _s3("execution", S3_WRITE, request["TransformOutput"]["S3OutputPath"], "TransformOutput.S3OutputPath")
    return out


def storage_accesses(settings: Settings, prefixes: tuple[str, ...]) -> list[Access]:
    """Every task reads, writes and deletes below the storage root (each owned prefix) and reads the input roots."""
    out: list[Access] = []
    for prefix in prefixes:
        uri = f"{settings.storage_uri}/{prefix}"
        out += _s3("airflow", ("s3:GetObject", *S3_WRITE, "s3:DeleteObject"), uri, f"tasks' storage: {prefix}/")
    for root in settings.input_roots:
        if root.startswith("s3://"):
            out += _s3("airflow", S3_READ, root, "PIPELINE_INPUT_ROOTS (read-only drops)")
    return out


def alert_and_key_accesses(settings: Settings) -> list[Access]:
    out = []
    if settings.alert_sns_topic_arn:
        out.append(Access("airflow", "sns:Publish", settings.alert_sns_topic_arn, "PIPELINE_ALERT_SNS_TOPIC_ARN"))
    for key in settings.kms_key_arns:
        out += [Access(who, action, key, "PIPELINE_KMS_KEY_ARNS") for who in POLICY_FILES for action in KMS_USE]
    return out


def _container(kind: str, image_uri: str, account_id: str) -> list[Access]:
    repository = ecr_repository_arn(image_uri)
    out = [Access("execution", action, repository, f"the {kind} image") for action in ECR_PULL]
    out.append(Access("execution", "ecr:GetAuthorizationToken", "*", "ECR login"))
    logs = f"arn:aws:logs:{repository.split(':')[3]}:{account_id}:log-group:/aws/sagemaker/x:log-stream:y"
    return out + [
        Access("execution", action, logs, "container logs") for action in ("logs:CreateLogStream", "logs:PutLogEvents")
    ]


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def destructive_probes(settings: Settings, account_id: str, region: str) -> list[Access]:
    """What must stay denied: deleting or changing another team's SageMaker resources, S3 writes outside the
    storage root, and SageMaker writing the predictions (only the worker does)."""
    other = "team-x-recommender"
    bucket = urlparse(settings.storage_uri).netloc
    out = [
        Access("airflow", f"sagemaker:{call}", sagemaker_arn(kind, other, account_id, region), "another team's")
        for kind, calls in (
            ("endpoint", ("DeleteEndpoint", "UpdateEndpoint", "AddTags", "InvokeEndpoint")),
            ("endpoint-config", ("DeleteEndpointConfig",)),
            ("model", ("DeleteModel",)),
            ("transform-job", ("StopTransformJob",)),
            ("training-job", ("StopTrainingJob",)),
        )
        for call in calls
    ]
    out.append(
        Access(
            "airflow",
            "cloudwatch:DeleteAlarms",
            f"arn:aws:cloudwatch:{region}:{account_id}:alarm:billing-alarm",
            "another alarm",
        )
    )
    for who in POLICY_FILES:
        out += [
            Access(who, action, f"arn:aws:s3:::{bucket}/other-prefix/data", "outside the storage root")
            for action in ("s3:PutObject", "s3:DeleteObject")
        ]
        out.append(Access(who, "s3:PutObject", "arn:aws:s3:::another-bucket/x", "another bucket"))
    out.append(
        Access(
            "execution",
            "s3:PutObject",
            s3_object_arn(settings.storage_uri, "predictions/dt=x/y"),
            "SageMaker never writes predictions/",
        )
    )
    return out


@dataclass(frozen=True)
class PolicyValues:
    account_id: str
    storage_uri: str  # s3://bucket/prefix
    execution_role_name: str
    alert_topic_arn: str = ""
    input_roots: tuple[str, ...] = ()
    kms_key_arns: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings, account_id: str) -> PolicyValues:
        if not settings.storage_uri.startswith("s3://"):
            raise ValueError(f"IAM policies are for an s3:// storage root, got {settings.storage_uri}")
        return cls(
            account_id=account_id,
            storage_uri=settings.storage_uri,
            execution_role_name=settings.sagemaker_role_arn.rsplit("/", 1)[-1] or "SAGEMAKER_EXECUTION_ROLE_NAME",
            alert_topic_arn=settings.alert_sns_topic_arn,
            input_roots=tuple(r for r in settings.input_roots if r.startswith("s3://")),
            kms_key_arns=settings.kms_key_arns,
        )


def render_policy(principal: Principal, values: PolicyValues) -> dict[str, Any]:
    """The policy document for `principal`, filled in for an account and storage root."""
    parsed = urlparse(values.storage_uri)
    text = (POLICY_DIR / POLICY_FILES[principal]).read_text(encoding="utf-8")
    for placeholder, value in (
        ("ACCOUNT_ID", values.account_id),
        ("STORAGE_BUCKET", parsed.netloc),
        ("STORAGE_PREFIX", parsed.path.strip("/")),
        ("SAGEMAKER_EXECUTION_ROLE_NAME", values.execution_role_name),
        ("ALERT_TOPIC_ARN", values.alert_topic_arn),
    ):
        text = text.replace(placeholder, value)
    doc = json.loads(text)
    doc["Statement"] = [s for s in doc["Statement"] if s.get("Resource")]  # no topic: no AlertTopic statement
    if principal == "airflow" and values.input_roots:
        doc["Statement"] += [
            {
                "Sid": "InputRootBuckets",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                "Resource": sorted({s3_bucket_arn(r) for r in values.input_roots}),
            },
            {
                "Sid": "InputRootsReadOnly",
                "Effect": "Allow",
                "Action": list(S3_READ),
                "Resource": [s3_object_arn(r, "*") for r in values.input_roots],
            },
        ]
    if values.kms_key_arns:
        doc["Statement"].append(
            {
                "Sid": "EncryptedStorageAndTopic",
                "Effect": "Allow",
                "Action": list(KMS_USE),
                "Resource": list(values.kms_key_arns),
            }
        )
    return doc

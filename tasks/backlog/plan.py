"""The plan of a backlog run: which days, what each day still needs (the nightly listing and carry-over), request
files grouped into transform jobs, the CreateTransformJob request, and the pre-flight estimate.

Each day is planned exactly as the nightly run plans it (`partitions.plan_partition`: the same listing, the same
carry-over of rows already classified by this model version), and each of its shards becomes one JSON Lines request
file. Files are grouped, in (dt, shard) order, into jobs of at most `images_per_job` images: Batch Transform hands
whole files to instances, so a job needs at least as many files as instances to use them all. Jobs run one after
another (pool `batch_transform`), each on `instance_count` instances.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tasks.common.aws_names import sagemaker_name, slug
from tasks.costs.pricing import EndpointPricing
from tasks.nightly.partitions import Shard, shard_digests

MAX_INSTANCES = 100  # CreateTransformJob: TransformResources.InstanceCount
MAX_PAYLOAD_MB = 100  # MaxPayloadInMB, and MaxConcurrentTransforms x MaxPayloadInMB, are capped at 100 MB
MAX_INVOCATION_TIMEOUT_S = 3600  # ModelClientConfig.InvocationsTimeoutInSeconds: 1-3600
MAX_INVOCATION_RETRIES = 3  # ModelClientConfig.InvocationsMaxRetries: 0-3
INPUT_FILTER = "$.body"  # the model gets the chat body only
OUTPUT_FILTER = "$['key','SageMakerOutput']"  # the joined line keeps the image key and the answer, not the image
REQUEST_SUFFIX = ".jsonl"
OUTPUT_SUFFIX = ".out"  # Batch Transform names the output of <file> <file>.out


DEFAULT_DAYS = 7  # without dates: the last week of complete days
# classify_backlog's defaults, also the CLI's (tasks/cli.py estimate-backlog)
DEFAULT_INSTANCE_COUNT = 1
DEFAULT_IMAGES_PER_FILE = 500
DEFAULT_IMAGES_PER_JOB = 1_000_000
DEFAULT_INVOCATION_TIMEOUT_S = 600
DEFAULT_INVOCATION_RETRIES = 1


def parse_day(value: str, name: str) -> date:
    """A dt given as exactly YYYY-MM-DD (not 20261101 or 2026-W48-1, which `date.fromisoformat` also takes); an
    error names what gave it (`name`: a param or a CLI flag)."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        day = None
    if day is None or day.isoformat() != value:
        raise ValueError(f"{name}: {value!r} is not a date (YYYY-MM-DD)")
    return day


def days_between(
    first: str | None,
    last: str | None,
    today: date | None = None,
    days: int = DEFAULT_DAYS,
    names: tuple[str, str] = ("from_date", "to_date"),
) -> list[str]:
    """Every dt from `first` to `last`, inclusive; `last` defaults to yesterday (UTC), `first` to `days` days ending
    at `last`. Errors name `first` and `last` by `names` (the params, or the CLI's flags)."""
    end = parse_day(last, names[1]) if last else (today or datetime.now(UTC).date()) - timedelta(days=1)
    start = parse_day(first, names[0]) if first else end - timedelta(days=days - 1)
    if end < start:
        raise ValueError(f"{names[1]} {end} is before {names[0]} {start}")
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


@dataclass(frozen=True)
class RequestFile:
    """One shard of one day's plan, as one request file of a job."""

    dt: str
    shard: dict[str, Any]  # tasks.nightly.partitions.Shard as a dict
    digest: str  # of the images it holds (partitions.shard_digests): part of its job's name

    @property
    def name(self) -> str:
        return f"{self.dt}-{self.shard['index']:05d}{REQUEST_SUFFIX}"

    @property
    def images(self) -> int:
        return int(self.shard["count"])


@dataclass(frozen=True)
class TransformJob:
    """A chunk of request files for one transform job; its name and prefixes are pure functions of the run and
    of what it classifies, so a retry or a rerun of the same run finds the same job."""

    index: int
    name: str
    prefix: str  # storage URI; input/, output/ and index/ below it
    files: list[RequestFile]

    @property
    def images(self) -> int:
        return sum(f.images for f in self.files)

    @property
    def input_uri(self) -> str:
        return f"{self.prefix}/input/"

    @property
    def output_uri(self) -> str:
        return f"{self.prefix}/output/"

    def index_uri(self, request: RequestFile) -> str:
        return f"{self.prefix}/index/{request.name}.parquet"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TransformJob:
        return cls(**{**doc, "files": [RequestFile(**f) for f in doc["files"]]})


@dataclass(frozen=True)
class TransformResources:
    """What each transform job runs on, and how hard each instance is driven."""

    instance_type: str
    instance_count: int
    concurrency: int  # requests in flight per instance (MaxConcurrentTransforms)
    invocation_timeout_s: int = 600
    invocation_retries: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.instance_count <= MAX_INSTANCES:
            raise ValueError(f"instance_count must be 1..{MAX_INSTANCES}, got {self.instance_count}")
        if not 1 <= self.concurrency <= MAX_PAYLOAD_MB:
            raise ValueError(f"concurrency per instance must be 1..{MAX_PAYLOAD_MB}, got {self.concurrency}")
        if not 1 <= self.invocation_timeout_s <= MAX_INVOCATION_TIMEOUT_S:
            raise ValueError(f"invocation timeout must be 1..{MAX_INVOCATION_TIMEOUT_S} s")
        if not 0 <= self.invocation_retries <= MAX_INVOCATION_RETRIES:
            raise ValueError(f"invocation retries must be 0..{MAX_INVOCATION_RETRIES}")


def run_prefix(backlog_root: str, dag_id: str, run_key: str, first: str, last: str) -> str:
    """`<storage>/backlog/<readable>-<hash>`: one folder per DAG run (kept when the run is cleared or rerun)."""
    digest = hashlib.sha256(f"{dag_id}/{run_key}".encode()).hexdigest()
    return f"{backlog_root}/{sagemaker_name(slug(f'{first}-{last}'), digest)}"


def request_files(dt: str, shards: list[Shard], conn_id: str | None = None) -> list[RequestFile]:
    """One request file per shard of a day's plan."""
    digests = shard_digests(shards, conn_id)
    return [RequestFile(dt, asdict(shard), digest) for shard, digest in zip(shards, digests, strict=True)]


def chunk_jobs(
    files: list[RequestFile], *, prefix: str, run_key: str, identity: dict[str, Any], images_per_job: int
) -> list[TransformJob]:
    """Consecutive request files, at most `images_per_job` images a job (a bigger file gets a job of its own).

    The job name hashes the run, the files' days and the digests of the images they hold — not the manifest URI,
    which is new on every planning, nor offsets, which hold other images once a carry-over changed the manifest —
    and `identity` (model, resources): a rerun that still has the same work attaches to the same jobs (and their
    outputs), and one whose work changed can never pick up a job that classified other images.
    """
    if images_per_job < 1:
        raise ValueError("images_per_job must be >= 1")
    chunks: list[list[RequestFile]] = []
    size = 0
    for request in files:
        if not chunks or size + request.images > images_per_job:
            chunks.append([])
            size = 0
        chunks[-1].append(request)
        size += request.images
    jobs = []
    for index, chunk in enumerate(chunks):
        what = [(f.dt, f.digest) for f in chunk]
        digest = hashlib.sha256(json.dumps([run_key, what, identity], sort_keys=True).encode()).hexdigest()
        name = sagemaker_name(slug(f"backlog-{chunk[0].dt}-{chunk[-1].dt}-j{index:03d}"), digest)
        jobs.append(TransformJob(index, name, f"{prefix}/{name}", chunk))
    return jobs


RECORDS_DIR = "records"  # `<job>/records/{input,output}/`: the follow-up job of a Failed job, one record per file


def records_job(job: TransformJob) -> TransformJob:
    """The follow-up job that re-sends, one record per request file, the records of `job`'s files that got no
    `.out` when it ended Failed (tasks.backlog.records). A pure function of the job: a retry attaches to it."""
    return TransformJob(job.index, records_job_name(job.name), f"{job.prefix}/{RECORDS_DIR}", job.files)


def records_job_name(job_name: str) -> str:
    """`backlog-records-...`: `backlog-` first, the only transform job names the Airflow role may create."""
    digest = hashlib.sha256(f"records/{job_name}".encode()).hexdigest()
    return sagemaker_name(slug(f"backlog-records-{job_name.removeprefix('backlog-')}"), digest)


def record_file_name(request_name: str, number: int) -> str:
    """`2026-10-05-00003.r00017.jsonl`: record `number` of request file `request_name`, alone in its own file."""
    return f"{request_name.removesuffix(REQUEST_SUFFIX)}.r{number:05d}{REQUEST_SUFFIX}"


def payload_mb(max_record_bytes: int) -> int:
    """MaxPayloadInMB for records of at most this size (whole MB, >= 1): it must hold the largest record."""
    mb = max(1, math.ceil(max_record_bytes / 2**20))
    if mb > MAX_PAYLOAD_MB:
        raise ValueError(f"a request record of {max_record_bytes:,} bytes is above Batch Transform's 100 MB limit")
    return mb


def transform_request(
    job: TransformJob, resources: TransformResources, *, model_name: str, max_record_bytes: int, uri: Any = str
) -> dict[str, Any]:
    """The CreateTransformJob request for a job (both backends run it: the local runner honours the same fields).

    SingleRecord + SplitType Line: one JSON Lines record is one invocation, as LMI's handler takes one request per
    call. InputFilter sends the record's chat body; JoinSource Input + OutputFilter write `{"key", "SageMakerOutput"}`
    lines, in input order, one `.out` file per request file. `uri` turns storage URIs into what the backend reads
    (plain s3:// for SageMaker).
    """
    payload = payload_mb(max_record_bytes)
    concurrency = min(resources.concurrency, MAX_PAYLOAD_MB // payload)
    return {
        "TransformJobName": job.name,
        "ModelName": model_name,
        "BatchStrategy": "SingleRecord",
        "MaxConcurrentTransforms": concurrency,
        "MaxPayloadInMB": payload,
        "ModelClientConfig": {
            "InvocationsTimeoutInSeconds": resources.invocation_timeout_s,
            "InvocationsMaxRetries": resources.invocation_retries,
        },
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri(job.input_uri)}},
            "ContentType": "application/jsonlines",
            "SplitType": "Line",
            "CompressionType": "None",
        },
        "TransformOutput": {
            "S3OutputPath": uri(job.output_uri),
            "Accept": "application/jsonlines",
            "AssembleWith": "Line",
        },
        "TransformResources": {"InstanceType": resources.instance_type, "InstanceCount": resources.instance_count},
        "DataProcessing": {"InputFilter": INPUT_FILTER, "JoinSource": "Input", "OutputFilter": OUTPUT_FILTER},
    }


@dataclass(frozen=True)
class Throughput:
    images_per_second: float  # per instance
    source: str  # "measured ..." or "assumed ..."

    @property
    def measured(self) -> bool:
        return self.source.startswith("measured")


@dataclass(frozen=True)
class Estimate:
    """What a backlog costs and takes before anything is spent. Jobs run one after another, after the canary; every
    job pays the model's start-up on each of its instances, the canary on one."""

    images: int
    jobs: int
    instance_type: str
    instance_count: int
    throughput: Throughput
    startup_s: float
    price_per_hour_usd: float
    instance_hours: float = 0.0
    wall_hours: float = 0.0
    usd: float = 0.0
    deadline_hours: float | None = None
    instances_for_deadline: int | None = None  # None: no deadline, or none up to 100 instances meets it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        t = self.throughput
        out = [
            f"images to classify: {self.images:,} in {self.jobs} transform job(s)",
            f"throughput: {t.images_per_second:.3f} images/s per instance ({t.source})",
            f"instance-hours: {self.instance_hours:,.2f} ({self.instance_count} x {self.instance_type}, "
            f"incl. {self.startup_s / 60:.0f} min model start-up per job and instance, and one canary job on one "
            "instance; a follow-up job per job that ends Failed is not included)",
            f"wall time: {self.wall_hours:,.2f} h with {self.instance_count} instance(s)",
            f"cost: ${self.usd:,.2f} at ${self.price_per_hour_usd}/instance-hour (batch transform is billed at the "
            "instance type's inference price)",
        ]
        if self.deadline_hours is not None:
            needed = self.instances_for_deadline
            out.append(
                f"deadline {self.deadline_hours:g} h: "
                + (f"needs {needed} instance(s)" if needed else f"not reachable with up to {MAX_INSTANCES} instances")
            )
        return out


def estimate_transform(
    images: int,
    jobs: int,
    pricing: EndpointPricing,
    throughput: Throughput,
    *,
    startup_s: float,
    deadline_hours: float | None = None,
) -> Estimate:
    """Instance-hours, wall time, $ and the instance count a deadline needs, for `images` in `jobs` jobs."""
    count = pricing.instance_count
    compute_s = images / throughput.images_per_second if images else 0.0  # instance-seconds of inference
    startup_total = startup_s * jobs if images else 0.0
    canary_s = startup_s if images else 0.0  # the canary job (tasks.backlog.canary): one instance's start-up
    instance_s = compute_s + startup_total * count + canary_s
    wall_s = canary_s + startup_total + compute_s / count
    needed = None
    if deadline_hours is not None and images:
        left = deadline_hours * 3600 - startup_total - canary_s
        n = math.ceil(compute_s / left) if left > 0 else MAX_INSTANCES + 1
        needed = n if n <= MAX_INSTANCES else None
    return Estimate(
        images=images,
        jobs=jobs,
        instance_type=pricing.instance_type,
        instance_count=count,
        throughput=throughput,
        startup_s=startup_s,
        price_per_hour_usd=pricing.price_per_hour_usd,
        instance_hours=instance_s / 3600,
        wall_hours=wall_s / 3600,
        usd=instance_s / 3600 * pricing.price_per_hour_usd,
        deadline_hours=deadline_hours,
        instances_for_deadline=needed,
    )


def jobs_needed(images: int, images_per_job: int) -> int:
    """How many jobs `chunk_jobs` makes for `images` (exact when no request file is larger than a job)."""
    return math.ceil(images / images_per_job) if images else 0

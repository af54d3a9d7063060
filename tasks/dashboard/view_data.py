"""What the "Costs & quality" view shows: per-partition volume, cost and invalid rate from the cost ledger with each
committed partition's quality-gate verdict (its `_SUCCESS` manifest), days committed with no ledger row (zero images,
no endpoint) and the days with no committed partition (gaps, up to the last complete day), training spend, and the
model registry: the production model and whether an endpoint serves it, every version's metrics, promotion decision
and review, and a chosen version's per-class metrics and confusion matrix. Every row links to the DAG run that
produced it. Production accuracy: per ISO week from the reviewed golden sample (tasks.review.accuracy), beside the
label-free estimate of the same week's partitions, with the review queue's pending and reviewed counts.

Plain data and formatting, apart from the web layer, so tests can compute exactly the strings the page must show.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, get_args
from urllib.parse import quote

from airflow.sdk import ObjectStoragePath

from tasks.common import run_notes, storage
from tasks.costs import ledger, pricing
from tasks.nightly import predictions
from tasks.nightly.partitions import NightlySchedule
from tasks.records.reviews import FoldedReviews
from tasks.review import accuracy, decisions, queue
from tasks.serving import deployment
from tasks.training import registry
from tasks.training.calibration import RISK_COVERAGE_FILE
from tasks.training.evaluation import CONFUSION_MATRIX_FILE, METRICS_FILE

MAX_PARTITIONS = 90  # a quarter of nights: enough for a trend, small enough for one page
MAX_GAP_DAYS = 366
NIGHTLY_DAG = "classify_images"  # wrote every ledger row recorded before rows named their DAG


def run_link(dag_id: str, run_id: str) -> str:
    """The DAG run's page in the Airflow UI, relative to the view (served at <base>/costs-quality/), so it also
    works behind a base-URL prefix; "" without a run id."""
    return f"../dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}" if dag_id and run_id else ""


# The plots of a model version's folder the view serves (nothing else under storage is).
MODEL_PLOTS = (CONFUSION_MATRIX_FILE, RISK_COVERAGE_FILE)


def model_plot_link(version: str, name: str) -> str:
    return f"models/{quote(version, safe='')}/{name}"


def confusion_matrix_link(version: str) -> str:
    return model_plot_link(version, CONFUSION_MATRIX_FILE)


@dataclass(frozen=True)
class PartitionRow:
    dt: str
    images: int
    images_ok: int
    images_invalid: int
    images_rejected: int
    images_failed: int
    cost_usd: float | None  # None: committed without a ledger row (zero images and no endpoint: nothing priced)
    usd_per_1000_images: float | None
    model_version: str
    run_id: str = ""
    dag_id: str = ""  # the DAG whose run committed the partition (classify_images or classify_backlog)
    # passed | violated (published anyway) | no data (zero images) | not committed: from _SUCCESS
    quality: str = "not committed"
    quality_detail: str = ""
    estimated_accuracy: float | None = None  # mean calibrated confidence of the committed answers (label-free)
    gap: bool = False

    @property
    def run_link(self) -> str:
        return run_link(self.dag_id or NIGHTLY_DAG, self.run_id)

    @property
    def quality_class(self) -> str:
        return self.quality.replace(" ", "-")

    @property
    def invalid_rate(self) -> float | None:
        """Answers that were not a label, over all images of the partition."""
        return self.images_invalid / self.images if self.images else None


@dataclass(frozen=True)
class TrainingRow:
    job: str
    model_version: str
    instance: str  # "2 × ml.g5.12xlarge (spot)"
    hours: float
    cost_usd: float
    recorded_at: str
    run_id: str = ""
    dag_id: str = "finetune_llava"

    @property
    def run_link(self) -> str:
        return run_link(self.dag_id, self.run_id)


@dataclass(frozen=True)
class Gap:
    """A day with nothing committed: between the oldest and the newest partition, or after the newest up to the
    last complete day (from the nightly start date on: days a nightly run should have committed)."""

    dt: str
    gap: bool = True


@dataclass(frozen=True)
class ModelSummary:
    version: str
    accuracy: float | None
    invalid_rate: float | None
    macro_f1: float | None = None


@dataclass(frozen=True)
class Serving:
    """What the endpoint record (serving/endpoint.json) says is deployed: promoted is not serving until
    deploy_endpoint has deployed it."""

    endpoint: str
    model_version: str
    since: str

    def describe(self, production: str | None) -> str:
        if production and self.model_version != production:
            return (
                f"NOT serving {production}: endpoint {self.endpoint} serves {self.model_version} since {self.since} "
                "(deploy_endpoint has not deployed the promotion: is it paused?)"
            )
        return f"serving on endpoint {self.endpoint} since {self.since}"


@dataclass(frozen=True)
class ModelRow:
    version: str
    status: str  # production | retired | rejected | candidate
    accuracy: float | None
    macro_f1: float | None
    invalid_rate: float | None
    decision: str  # why it was promoted or refused
    created_at: str
    dag_id: str
    run_id: str
    review: str = ""  # "approved by alice at T: comment"; "" when nobody reviewed it
    trained_on_reviews: str = ""  # "210 reviewed labels (3 relabelled, 207 added) from <snapshot>"; "" when none

    @property
    def run_link(self) -> str:
        return run_link(self.dag_id, self.run_id)

    @property
    def confusion_matrix_link(self) -> str:
        return confusion_matrix_link(self.version)


@dataclass(frozen=True)
class ModelDetail:
    """The chosen version: per-class metrics and the confidence calibration from its metrics.json."""

    version: str
    per_class: dict[str, dict[str, float]]
    n_test: int | None
    calibration: dict[str, Any] | None = None  # tasks.training.calibration's report; None: not calibrated

    @property
    def confusion_matrix_link(self) -> str:
        return confusion_matrix_link(self.version)

    @property
    def risk_coverage_link(self) -> str:
        """The risk-coverage plot; "" when evaluation drew none (no test rows with decision-token scores)."""
        return model_plot_link(self.version, RISK_COVERAGE_FILE) if (self.calibration or {}).get("after") else ""


@dataclass(frozen=True)
class CostsQualityReport:
    partitions: list[PartitionRow]  # newest first
    training: list[TrainingRow]  # newest first
    spend_by_kind: dict[str, float]
    model: ModelSummary | None
    prices_as_of: str
    days: list[PartitionRow | Gap]  # newest first: partitions with their verdicts, and the gaps between them
    models: list[ModelRow]  # newest first
    selected: ModelDetail | None  # the version whose per-class metrics and confusion matrix are shown
    review: ReviewSummary  # production accuracy from the reviewed golden sample, and the queue's counts
    serving: Serving | None = None  # None: no endpoint deployed

    @property
    def serving_text(self) -> str:
        production = self.model.version if self.model else None
        if self.serving is None:
            return "NOT serving: no endpoint deployed (run deploy_endpoint)" if production else ""
        return self.serving.describe(production)


_PARTITIONS_SQL = f"""
SELECT key AS dt, images, images_ok, images_invalid, images_rejected, images_failed, cost_usd, usd_per_1000_images,
       model_version, run_id, COALESCE(dag_id, '') AS dag_id
FROM ledger WHERE kind = 'classification' ORDER BY key DESC LIMIT {MAX_PARTITIONS}
"""
_TRAINING_SQL = """
SELECT key AS job, model_version, instance_type, instance_count, spot, billable_seconds, cost_usd, recorded_at, run_id
FROM ledger WHERE kind = 'training' ORDER BY recorded_at DESC
"""
# An empty ledger has string columns only (tasks.costs.read_ledger): cast before summing.
_SPEND_SQL = "SELECT kind, SUM(CAST(cost_usd AS DOUBLE)) AS usd FROM ledger GROUP BY kind ORDER BY kind"


def build_report(root: ObjectStoragePath, version: str | None = None, today: date | None = None) -> CostsQualityReport:
    """Everything the view shows, from the storage root (the `costs/` ledger, the `predictions/` manifests, the
    `models/` registry and the `serving/` endpoint record). `version`: whose per-class metrics and confusion matrix
    to show (default: production, else the newest); an unknown one shows none. `today` (UTC) bounds the gaps."""
    costs_root = root / storage.COSTS
    priced = [
        with_verdict(PartitionRow(**row), root / storage.PREDICTIONS)
        for row in ledger.query(costs_root, _PARTITIONS_SQL)
    ]
    partitions = sorted(
        priced + unpriced_partitions(root / storage.PREDICTIONS, {p.dt for p in priced}),
        key=lambda p: (is_day(p.dt), p.dt),
        reverse=True,
    )  # newest day first, bad records last: a hostile key is never "the latest partition"
    training = [_training_row(row) for row in ledger.query(costs_root, _TRAINING_SQL)]
    spend = {row["kind"]: float(row["usd"]) for row in ledger.query(costs_root, _SPEND_SQL)}
    models = model_rows(root / storage.MODELS)
    chosen = version or next(
        (m.version for m in models if m.status == "production"), models[0].version if models else None
    )
    last_complete = (today or datetime.now(UTC).date()) - timedelta(days=1)
    return CostsQualityReport(
        partitions=partitions,
        training=training,
        spend_by_kind=spend,
        model=production_model(root / storage.MODELS),
        prices_as_of=str(pricing.price_table()["as_of"]),
        days=with_gaps(partitions, root / storage.PREDICTIONS, expected_until=last_complete),
        models=models,
        selected=model_detail(root / storage.MODELS, chosen) if chosen else None,
        serving=serving(root / storage.SERVING),
        review=review_summary(list(queue.read_queue(root)), decisions.reviewed_labels(root), partitions),
    )


@dataclass(frozen=True)
class AccuracyWeek:
    """One ISO week's production accuracy (reviewed golden sample, Wilson 95% interval) beside the label-free
    estimate of that week's committed partitions."""

    measured: accuracy.WeeklyAccuracy
    estimated_accuracy: float | None  # mean calibrated confidence of the week's ok rows; None: none calibrated


@dataclass(frozen=True)
class ReasonCounts:
    reason: str  # low_confidence | golden_sample | mislabel_flag
    pending: int
    reviewed: int


@dataclass(frozen=True)
class ReviewSummary:
    weeks: list[AccuracyWeek]  # newest first
    counts: list[ReasonCounts]  # every reason, in queue.Reason's order

    @property
    def latest(self) -> AccuracyWeek | None:
        return self.weeks[0] if self.weeks else None


def review_summary(
    items: list[queue.QueueItem], reviewed: Mapping[str, decisions.Decision], partitions: Iterable[PartitionRow]
) -> ReviewSummary:
    """Production accuracy per week (newest first) with each week's estimate, and pending/reviewed per reason."""
    estimates = weekly_estimates(partitions)
    measured = accuracy.production_accuracy(items, reviewed)[::-1]
    weeks = [AccuracyWeek(week, estimates.get(week.week)) for week in measured]
    done = Counter((item.reason, item.content_sha256 in reviewed) for item in items)
    counts = [ReasonCounts(reason, done[reason, False], done[reason, True]) for reason in get_args(queue.Reason)]
    return ReviewSummary(weeks, counts)


def weekly_estimates(partitions: Iterable[PartitionRow]) -> dict[str, float]:
    """ISO week → the mean calibrated confidence of its partitions, weighted by their ok rows (the rows a
    confidence is computed over); partitions without an estimate or not named by a day are left out."""
    sums: dict[str, list[float]] = {}
    for p in partitions:
        if p.estimated_accuracy is None or not p.images_ok or not is_day(p.dt):
            continue
        total = sums.setdefault(accuracy.iso_week(p.dt), [0.0, 0.0])
        total[0] += p.estimated_accuracy * p.images_ok
        total[1] += p.images_ok
    return {week: weighted / n for week, (weighted, n) in sums.items()}


def serving(serving_root: ObjectStoragePath) -> Serving | None:
    record = deployment.current_endpoint(serving_root)
    if record is None:
        return None
    return Serving(endpoint=record.endpoint_name, model_version=record.model_version, since=record.deployed_at)


def unpriced_partitions(predictions_root: ObjectStoragePath, priced: set[str]) -> list[PartitionRow]:
    """Days committed without a ledger row — zero images with no endpoint deployed writes none — read from their
    `_SUCCESS` manifests, so such a day shows as the zero-image day it is instead of vanishing. Only `dt=<day>`
    folders are looked at, the newest MAX_PARTITIONS."""
    if not predictions_root.exists():
        return []
    days = sorted(
        (c.name.removeprefix("dt=") for c in predictions_root.iterdir() if c.name.startswith("dt=")), reverse=True
    )
    rows = []
    for dt in [d for d in days if is_day(d) and d not in priced][:MAX_PARTITIONS]:
        manifest = predictions.read_success(predictions.partition_dir(predictions_root, dt))
        if manifest is None:
            continue
        statuses = (manifest.get("stats") or {}).get("statuses") or {}
        row = PartitionRow(
            dt=dt,
            images=manifest.get("rows", 0),
            images_ok=statuses.get("ok", 0),
            images_invalid=statuses.get("invalid", 0),
            images_rejected=statuses.get("rejected", 0),
            images_failed=statuses.get("failed", 0),
            cost_usd=None,
            usd_per_1000_images=None,
            model_version=manifest.get("model_version", ""),
        )
        rows.append(verdict_of(row, manifest))
    return rows


def is_day(text: str) -> bool:
    """A ledger key that names a day (YYYY-MM-DD): only such a key becomes a partition path or a calendar day."""
    try:
        return len(text) == 10 and date.fromisoformat(text).isoformat() == text
    except (TypeError, ValueError):
        return False


def with_verdict(row: PartitionRow, predictions_root: ObjectStoragePath) -> PartitionRow:
    """The partition's quality-gate verdict from its committed `_SUCCESS` manifest (the ledger row is written
    beside the commit, so a partition can be priced but not committed: the gate failed and nothing was published).
    A row whose dt is not a day is shown as a bad record; its key never becomes a path."""
    if not is_day(row.dt):
        return replace(row, quality="bad record", quality_detail="its dt is not a YYYY-MM-DD day; not looked up")
    manifest = predictions.read_success(predictions.partition_dir(predictions_root, row.dt))
    if manifest is None:
        return replace(row, quality="not committed")
    return verdict_of(row, manifest)


def verdict_of(row: PartitionRow, manifest: dict[str, Any]) -> PartitionRow:
    """passed | violated | no data (zero images: nothing to judge, never "passed"), as run_notes words it."""
    verdict = manifest.get("quality") or {}
    checks = verdict.get("checks") or []
    detail = "; ".join(f"{c.get('name')}: {c.get('value')}" for c in checks if not c.get("passed", True))
    quality = run_notes.quality_verdict(verdict, manifest.get("rows", row.images))
    estimated = predictions.RowStats.from_dict(manifest.get("stats") or {}).mean_confidence
    return replace(row, quality=quality, quality_detail=detail, estimated_accuracy=estimated)


def with_gaps(
    partitions: list[PartitionRow], predictions_root: ObjectStoragePath, expected_until: date | None = None
) -> list[PartitionRow | Gap]:
    """Partitions newest first, with a Gap for each day that has no committed partition: between the oldest and the
    newest, and after the newest up to `expected_until` (the last complete day) from the nightly start date
    (PIPELINE_CLASSIFY_START_DATE) on — a failed or missing latest night is a gap too. Looked for in the last
    MAX_GAP_DAYS only (one far-off date must not cost a storage lookup per day in between). Bad records (a dt that is
    not a day) come last, as they are."""
    bad = [p for p in partitions if not is_day(p.dt)]
    by_day = {p.dt: p for p in partitions if is_day(p.dt)}
    if not by_day:
        return list(bad)
    first, newest = date.fromisoformat(min(by_day)), date.fromisoformat(max(by_day))
    start = NightlySchedule.from_env().start_date
    last = max(newest, expected_until or newest)
    window = min((last - first).days + 1, MAX_GAP_DAYS)
    days: list[PartitionRow | Gap] = []
    for n in range(window):
        day = last - timedelta(days=n)
        if day > newest and day < start:  # after the newest partition, only nightly days are expected
            continue
        if day.isoformat() in by_day:
            days.append(by_day.pop(day.isoformat()))
        elif predictions.read_success(predictions.partition_dir(predictions_root, day.isoformat())) is None:
            days.append(Gap(day.isoformat()))
    return days + sorted(by_day.values(), key=lambda p: p.dt, reverse=True) + bad


def folded_text(folded: FoldedReviews | None) -> str:
    """Which reviewed labels a version's dataset was curated with, in one line; "" when none."""
    if folded is None:
        return ""
    return (
        f"{folded.used} reviewed labels ({folded.relabelled} relabelled, {folded.added} added) from {folded.snapshot}"
    )


def model_rows(models_root: ObjectStoragePath) -> list[ModelRow]:
    """Every registered version with its held-out metrics, promotion decision and review, newest first."""
    reviews = registry.reviews(models_root)
    rows = [
        ModelRow(
            version=version,
            status=entry.status,
            accuracy=entry.metrics.get("accuracy"),
            macro_f1=entry.metrics.get("macro_f1"),
            invalid_rate=entry.metrics.get("invalid_rate"),
            decision=entry.decision or "",
            created_at=entry.created_at or "",
            dag_id=entry.dag_id or "",
            run_id=entry.run_id or "",
            review=review_text(reviews.get(version)),
            trained_on_reviews=folded_text(entry.reviews),
        )
        for version, entry in registry.versions(models_root).items()
    ]
    return sorted(rows[::-1], key=lambda row: row.created_at, reverse=True)  # ties: the later registered first


def review_text(review: dict[str, Any] | None) -> str:
    if not review:
        return ""
    comment = f": {review['comment']}" if review.get("comment") else ""
    return f"{review['decision']} by {review['by']} at {review['at']}{comment}"


def model_detail(models_root: ObjectStoragePath, version: str) -> ModelDetail | None:
    """A registered version's per-class metrics; None for a version the registry does not know."""
    if version not in registry.read_registry(models_root)["versions"]:
        return None
    metrics = storage.read_json(models_root / version / METRICS_FILE, default=None) or {}
    return ModelDetail(
        version=version,
        per_class=metrics.get("per_class", {}),
        n_test=metrics.get("n_test"),
        calibration=metrics.get("calibration"),
    )


def model_plot_png(models_root: ObjectStoragePath, version: str, name: str) -> bytes | None:
    """One of MODEL_PLOTS of a version the registry knows; None for anything else (nothing else is served)."""
    if name not in MODEL_PLOTS or version not in registry.read_registry(models_root)["versions"]:
        return None
    path = models_root / version / name
    return path.read_bytes() if path.exists() else None


def confusion_matrix_png(models_root: ObjectStoragePath, version: str) -> bytes | None:
    return model_plot_png(models_root, version, CONFUSION_MATRIX_FILE)


def _training_row(row: dict[str, Any]) -> TrainingRow:
    spot = " (spot)" if row["spot"] else ""
    return TrainingRow(
        job=row["job"],
        model_version=row["model_version"],
        instance=f"{row['instance_count']} × {row['instance_type']}{spot}",
        hours=row["billable_seconds"] / 3600,
        cost_usd=row["cost_usd"],
        recorded_at=row["recorded_at"],
        run_id=row["run_id"] or "",
    )


def production_model(models_root: ObjectStoragePath) -> ModelSummary | None:
    """The promoted version and its held-out metrics; None before the first promotion."""
    model = registry.production_model(models_root)
    if model is None:
        return None
    return ModelSummary(
        version=model.version,
        accuracy=model.accuracy,
        invalid_rate=model.metrics.get("invalid_rate"),
        macro_f1=model.metrics.get("macro_f1"),
    )


def usd(value: float | None) -> str:
    """Dollars with enough digits for the cents-per-thousand scale of local runs."""
    if value is None:
        return "—"
    return f"${value:,.4f}" if abs(value) < 10 else f"${value:,.2f}"


def thousands(value: int) -> str:
    return f"{value:,}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"

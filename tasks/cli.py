"""Command-line entry points for people (and `make demo`): `llava-pipelines <command> --help` from any directory
(installed by `make install`), or `python -m tasks.cli` from the checkout. Errors are one line on stderr (exit 1);
LLAVA_PIPELINES_DEBUG=1 shows the traceback. Flags are checked before anything is read: dates are YYYY-MM-DD and
ranges run forwards, budgets are not negative, and a command that reads the storage root refuses a local one that
does not exist (a mistyped PIPELINE_STORAGE_URI would otherwise read as "nothing there")."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from tasks.common.settings import load_settings
from tasks.common.storage import local_path, read_json, storage_path

DATE_FLAGS = ("--from-date", "--to-date")  # how days_between names the range in an error
AT_LEAST = {"budget_usd": 0, "window_days": 1, "days": 1}  # a numeric flag's least sensible value, checked by main


def _days(args: argparse.Namespace, **kwargs: int) -> list[str]:
    from tasks.backlog.plan import days_between

    return days_between(args.from_date, args.to_date, names=DATE_FLAGS, **kwargs)


def _check_flags(args: argparse.Namespace) -> None:
    """What no command can use, refused in one line before anything is read: numbers below their least value, and
    (`reads_storage` commands) a local storage root that does not exist."""
    for name, least in AT_LEAST.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag}: {value} is negative" if least == 0 else f"{flag}: {value} is below {least}")
    if getattr(args, "reads_storage", False):
        uri = load_settings().storage_uri
        if uri.startswith("file://") and not local_path(uri).is_dir():
            given = os.environ.get("PIPELINE_STORAGE_URI", "").strip()
            setting = f"PIPELINE_STORAGE_URI={given}" if given else "the default; set PIPELINE_STORAGE_URI"
            raise ValueError(f"storage root {local_path(uri)} does not exist ({setting})")


def _write_digits(args: argparse.Namespace) -> None:
    from tasks.model.demo_data import write_labelled

    n = write_labelled(storage_path(args.dest, load_settings().aws_conn_id))
    print(f"wrote {n} digit images under {args.dest}")


def _curation_summary(args: argparse.Namespace) -> None:
    from tasks.curation.curate import REPORT_NAME, summary

    report = read_json(storage_path(args.dataset_uri, load_settings().aws_conn_id) / REPORT_NAME)
    if report is None:
        raise SystemExit(f"no {REPORT_NAME} under {args.dataset_uri}: curation did not complete there")
    print(summary(report))


def _model_summary(args: argparse.Namespace) -> None:
    from tasks.common import storage
    from tasks.training.calibration import RISK_COVERAGE_FILE
    from tasks.training.evaluation import CONFUSION_MATRIX_FILE, METRICS_FILE, summary
    from tasks.training.registry import versions as registered

    settings = load_settings()
    models = storage.root(settings) / storage.MODELS
    versions = registered(models)
    if not versions:
        raise SystemExit(f"no model versions registered under {models}: run finetune_llava first")
    version = args.version or max(versions, key=lambda v: versions[v].created_at or "")
    metrics = read_json(models / version / METRICS_FILE)
    if metrics is None:
        raise SystemExit(f"no {METRICS_FILE} for {version} under {models}")
    entry = versions.get(version)
    status, decision = (entry.status, entry.decision) if entry else ("unregistered", None)
    print(f"Model {version}: {status} ({decision or 'no decision yet'})")
    print(summary(metrics))
    print(f"held-out accuracy: {metrics['accuracy']:.4f}   train_seconds: {metrics['train_seconds']:.1f}")
    print(f"model:            {metrics['model_uri']}")
    print(f"confusion matrix: {models / version / CONFUSION_MATRIX_FILE}")
    if entry and entry.reviews:
        folded = entry.reviews
        print(
            f"reviewed labels:  {folded.used} from {folded.snapshot} ({folded.relabelled} relabelled, "
            f"{folded.added} reviewed production images added)"
        )
    if (metrics.get("calibration") or {}).get("after"):
        print(f"risk-coverage:    {models / version / RISK_COVERAGE_FILE}")
    if metrics["train_seconds"] > args.max_train_seconds:  # a busy machine is slow, not wrong: say so, go on
        print(
            f"WARNING: training took {metrics['train_seconds']:.0f} s, above {args.max_train_seconds:.0f} s "
            "(measured ~140 s on an idle 2-core machine; other load on the cores slows it down)"
        )
    if metrics["accuracy"] < args.min_accuracy:
        raise SystemExit(f"held-out accuracy {metrics['accuracy']:.4f} is below the expected {args.min_accuracy}")


def _write_incoming(args: argparse.Namespace) -> None:
    from tasks.common import storage
    from tasks.curation.curate import REPORT_NAME
    from tasks.model.demo_data import held_out_indices, write_incoming

    days = _days(args, days=args.days)
    settings = load_settings()
    report = read_json(storage_path(args.dataset_uri, settings.aws_conn_id) / REPORT_NAME)
    if report is None:
        raise SystemExit(f"no {REPORT_NAME} under {args.dataset_uri}: curate first")
    incoming = storage.root(settings) / storage.INCOMING
    counts = write_incoming(incoming, days, held_out_indices(report), corrupt=args.corrupt)
    what = (
        "held-out test digits, blurred, rotated or replaced by photo patches"
        if args.corrupt
        else "held-out test digits"
    )
    for day, n in counts.items():
        print(f"dt={day}: {n} {what}")
    print(f"FROM_DATE={days[0]} TO_DATE={days[-1]}")


def _estimate_cost(args: argparse.Namespace) -> None:
    from tasks.common.storage import incoming_template
    from tasks.costs.budget import BudgetExceeded
    from tasks.nightly.steps import estimate_backfill

    params = {
        "incoming_uri": args.incoming_uri or incoming_template(load_settings()),
        "budget_usd": args.budget_usd,
        "assumed_images_per_second": args.assumed_images_per_second,
    }
    try:
        result = estimate_backfill(load_settings(), _days(args), params)
    except BudgetExceeded as exc:
        raise SystemExit(f"REFUSED: {exc}") from None
    for day, n in result["per_day"].items():
        print(f"dt={day}: {n} images")
    endpoint = f"{result['instance_count']} x {result['instance_type']} at ${result['price_per_hour_usd']}/h"
    if result["endpoint"] == "assumed":
        print(f"no endpoint deployed: priced as the default deploy_endpoint would deploy ({endpoint})")
    else:
        print(f"priced on the deployed endpoint ({endpoint})")
    print(
        f"estimate: ${result['usd']:.4f} for {result['images']} images at {result['images_per_second']:.2f} "
        f"images/s ({result['throughput']}), budget ${result['budget_usd']:.2f}: OK"
    )


def _estimate_backlog(args: argparse.Namespace) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from tasks.backlog import plan
    from tasks.backlog.steps import estimate_range, refuse_if_over
    from tasks.common.storage import incoming_template

    _days(args)  # the range, checked with the flags' names before estimate_range reads it as params
    params = {
        "from_date": args.from_date,
        "to_date": args.to_date,
        "incoming_uri": args.incoming_uri or incoming_template(load_settings()),
        "instance_type": args.instance_type,
        "instance_count": args.instance_count,
        "concurrency_per_instance": args.concurrency_per_instance,
        "invocation_timeout_s": plan.DEFAULT_INVOCATION_TIMEOUT_S,
        "invocation_retries": plan.DEFAULT_INVOCATION_RETRIES,
        "images_per_job": args.images_per_job,
        "deadline_hours": args.deadline_hours,
        "assumed_images_per_second": args.assumed_images_per_second,
    }
    per_day, result = estimate_range(load_settings(), params, images=args.images)
    for day, n in per_day.items():
        print(f"dt={day}: {n} images")
    print("\n".join(result.lines()))
    try:
        refuse_if_over(result, args.budget_usd, f"backlog {args.from_date}..{args.to_date}")
    except AirflowFailException as exc:  # BudgetExceeded too
        raise SystemExit(f"REFUSED: {str(exc).splitlines()[0]}") from None
    print(f"budget ${args.budget_usd:,.2f}: OK")


def _predictions_summary(args: argparse.Namespace) -> None:
    from tasks.common import storage
    from tasks.costs.daily_report import REPORTS_DIR, daily_costs
    from tasks.model.demo_data import score
    from tasks.nightly import predictions

    settings = load_settings()
    root = storage.root(settings)
    days = _days(args)
    costs = {row.day: row for row in daily_costs(root / storage.COSTS, args.to_date, window_days=len(days))}
    for day in days:
        partition = predictions.partition_dir(root / storage.PREDICTIONS, day)
        manifest = predictions.read_success(partition)
        if manifest is None:
            print(f"dt={day}: not committed")
            continue
        stats = manifest["stats"]
        line = f"dt={day}: {stats['rows']} rows {stats['statuses']} (carried {manifest['carried']})"
        estimated = predictions.RowStats.from_dict(stats).mean_confidence
        line += "" if estimated is None else f", estimated accuracy {estimated:.3f}"
        if args.demo_accuracy:
            correct, asked = score(predictions.read_partition(partition).to_pylist())
            line += f", true accuracy {correct}/{asked} = {correct / asked:.3f}" if asked else ""
        cost = costs.get(day)
        if cost and cost.images:
            line += (
                f", ${cost.usd_per_1000_images:.5f}/1000 images busy "
                f"(${cost.all_in_usd_per_1000_images:.5f} all-in with idle time)"
            )
        print(line)
        print("    labels: " + ", ".join(f"{label}={n}" for label, n in stats["labels"].items()))
    report = root / storage.COSTS / REPORTS_DIR / f"day={args.to_date}"
    if (report / "costs.png").exists():  # written by classify_images' cost_report task or `cost-report`, not here
        print(f"cost report: {report}/costs.png (table: costs.md, costs.csv)")
    else:
        command = f"llava-pipelines cost-report --day {args.to_date}"
        print(f"cost report: none for {args.to_date} yet (`{command}` writes it)")


def _cost_report(args: argparse.Namespace) -> None:
    from datetime import UTC, datetime

    from tasks.backlog.plan import parse_day
    from tasks.common import storage
    from tasks.costs.daily_report import write_report

    day = parse_day(args.day, "--day").isoformat() if args.day else datetime.now(UTC).date().isoformat()
    paths = write_report(storage.root(load_settings()) / storage.COSTS, day, args.window_days)
    print(storage_path(paths["markdown"]).read_text())
    for name, path in paths.items():
        print(f"{name}: {path}")


def _review_export(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from tasks.common import storage
    from tasks.model.taxonomy import load_taxonomy
    from tasks.review import decisions, label_studio, queue

    settings = load_settings()
    root = storage.root(settings)
    reviewed = decisions.reviewed_labels(root)
    items = [item for item in queue.read_queue(root) if args.all or item.content_sha256 not in reviewed]
    Path(args.out).write_text(json.dumps(label_studio.export_tasks(items, settings.storage_uri), indent=2) + "\n")
    print(f"{len(items)} Label Studio task(s): {args.out}")
    if args.config:
        Path(args.config).write_text(label_studio.labeling_config(load_taxonomy(settings.taxonomy)))
        print(f"labeling config: {args.config}")


def _review_import(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from tasks.common import storage
    from tasks.model.taxonomy import load_taxonomy
    from tasks.review import label_studio, queue

    settings = load_settings()
    root = storage.root(settings)
    tasks = json.loads(Path(args.annotations).read_text(encoding="utf-8"))
    done = label_studio.import_annotations(root, tasks, queue.read_queue(root), load_taxonomy(settings.taxonomy))
    print(f"{len(done.recorded)} decision(s) recorded, {done.unchanged} already recorded, {len(done.skipped)} skipped")
    for reason in done.skipped:
        print(f"    skipped {reason}")


def _review_enqueue_flags(args: argparse.Namespace) -> None:
    from tasks.common import storage
    from tasks.review import queue

    added = queue.enqueue_flags(storage.root(load_settings()), args.version)
    print(f"{len(added)} likely mislabel(s) of {args.version} queued for review")


def _demo_annotate(args: argparse.Namespace) -> None:
    import json
    from datetime import UTC, datetime
    from pathlib import Path

    from tasks.model.demo_data import known_label
    from tasks.review.label_studio import annotation

    tasks = json.loads(Path(args.tasks).read_text(encoding="utf-8"))
    now = datetime.now(UTC)
    for task in tasks:
        task["annotations"] = [annotation(known_label(task["data"]["key"]), args.annotator, now)]
    Path(args.out).write_text(json.dumps(tasks, indent=2) + "\n")
    print(f"{len(tasks)} task(s) annotated with the digits' known labels by {args.annotator}: {args.out}")


def _production_accuracy(args: argparse.Namespace) -> None:
    from tasks.common import storage
    from tasks.review import accuracy, decisions, queue

    root = storage.root(load_settings())
    items = list(queue.read_queue(root))
    weeks = accuracy.production_accuracy(items, decisions.reviewed_labels(root))
    print("\n".join(week.line() for week in weeks) or "no reviewed golden-sample images yet")
    if args.demo_truth and weeks:
        truth = _demo_truth_by_week(root, {item.dt for item in items if item.dt})
        for week in weeks:
            correct, ok = truth.get(week.week, (0, 0))
            inside = "inside" if ok and week.low <= correct / ok <= week.high else "OUTSIDE"
            print(f"    truth {week.week}: {correct}/{ok} = {correct / ok:.3f} of every ok row committed ({inside})")


def _demo_truth_by_week(root: Any, days: set[str]) -> dict[str, tuple[int, int]]:
    """ISO week → (correct, ok) over every committed `ok` row of the demo digits on `days`: the accuracy the golden
    sample estimates."""
    from tasks.common import storage
    from tasks.model.demo_data import known_label
    from tasks.nightly import predictions
    from tasks.review.accuracy import iso_week

    truth: dict[str, tuple[int, int]] = {}
    for day in sorted(days):
        partition = predictions.partition_dir(root / storage.PREDICTIONS, day)
        if predictions.read_success(partition) is None:
            continue
        rows = [r for r in predictions.read_partition(partition).to_pylist() if r["status"] == "ok"]
        correct, ok = truth.get(iso_week(day), (0, 0))
        truth[iso_week(day)] = correct + sum(r["label"] == known_label(r["key"]) for r in rows), ok + len(rows)
    return truth


def _preflight(args: argparse.Namespace) -> None:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    from tasks.preflight.checks import run_checks, table

    settings = load_settings()

    def client(service: str):
        return AwsBaseHook(aws_conn_id=settings.aws_conn_id, client_type=service, region_name=settings.region).conn

    checks = run_checks(settings, client, args.airflow_role_arn)
    print(table(checks))
    if not all(check.ready for check in checks):
        raise SystemExit(1)


def _iam_policies(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from tasks.preflight.iam import POLICY_FILES, PolicyValues, render_policy

    values = PolicyValues.from_settings(load_settings(), args.account_id)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for principal, name in POLICY_FILES.items():
        (out / name).write_text(json.dumps(render_policy(principal, values), indent=2) + "\n")
        print(f"{principal} role: {out / name}")


def _plan_training(args: argparse.Namespace) -> None:
    """The SageMaker training plan for N curated images (curation's default split fractions), sized as
    finetune_llava's plan task sizes it; one that cannot finish in MaxRuntime is refused with what fits (exit 1)."""
    from tasks.curation.curate import CurationOptions
    from tasks.model.taxonomy import load_taxonomy
    from tasks.training.sagemaker import SAGEMAKER_HYPERPARAMETERS
    from tasks.training.sizing import size_training

    options = CurationOptions()
    test, validation = round(args.images * options.test_fraction), round(args.images * options.val_fraction)
    train = args.images - test - validation
    print(f"{args.images:,} images: train {train:,}, validation {validation:,}, test {test:,} (curation's defaults)")
    hyperparameters = dict(SAGEMAKER_HYPERPARAMETERS)
    if args.epochs:
        hyperparameters["num_train_epochs"] = args.epochs
    size = size_training(
        hyperparameters,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        train_examples=train,
        test_examples=test,
        max_run_seconds=args.max_run_seconds,
        splits={"train": train, "validation": validation, "test": test},
        labels=len(load_taxonomy(args.taxonomy).labels),
    )
    print(size.describe())


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prog = "llava-pipelines" if os.path.basename(sys.argv[0]) == "llava-pipelines" else "python -m tasks.cli"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(required=True)
    from tasks.backlog import plan as backlog_plan
    from tasks.training.sizing import DEFAULT_INSTANCE_TYPE, DEFAULT_MAX_RUN_SECONDS

    p = sub.add_parser("write-digits", help="write scikit-learn digits as <dest>/<label>/*.png")
    p.add_argument("dest", help="destination URI (file:// or s3://)")
    p.set_defaults(func=_write_digits)

    p = sub.add_parser("curation-summary", help="print the readable summary of a curated dataset")
    p.add_argument("dataset_uri")
    p.set_defaults(func=_curation_summary)

    p = sub.add_parser("model-summary", help="print a model version's held-out metrics (default: the newest)")
    p.add_argument("version", nargs="?", help="a version under <storage>/models/")
    p.add_argument("--min-accuracy", type=float, default=0.0, help="exit 1 below this held-out accuracy")
    p.add_argument("--max-train-seconds", type=float, default=float("inf"), help="warn above this training time")
    p.set_defaults(func=_model_summary, reads_storage=True)

    p = sub.add_parser("write-incoming", help="write a curated dataset's held-out test digits as incoming/dt=…/")
    p.add_argument("dataset_uri", help="a curated dataset (its curation_report.json lists the test split)")
    p.add_argument("--days", type=int, default=3, help="this many days ending yesterday (UTC)")
    p.add_argument("--from-date", help="or an explicit range")
    p.add_argument("--to-date")
    p.add_argument(
        "--corrupt",
        action="store_true",
        help="a bad night: every image blurred, rotated or off-domain (the gate's test)",
    )
    p.set_defaults(func=_write_incoming, reads_storage=True)

    p = sub.add_parser("estimate-cost", help="budget guard for a backfill range, before `backfill create`")
    p.add_argument("--from-date", required=True)
    p.add_argument("--to-date", required=True)
    p.add_argument("--budget-usd", type=float, required=True)
    p.add_argument("--assumed-images-per-second", type=float, default=1.0, help="until a throughput is measured")
    p.add_argument("--incoming-uri", default="", help="template with {dt}; default <storage>/incoming/dt={dt}/")
    p.set_defaults(func=_estimate_cost, reads_storage=True)

    p = sub.add_parser("estimate-backlog", help="pre-flight for classify_backlog: images, instance-hours, wall time, $")
    p.add_argument("--from-date", required=True)
    p.add_argument("--to-date", required=True)
    p.add_argument("--budget-usd", type=float, required=True)
    p.add_argument("--instance-type", default=None, help="default: the backend's (ml.g5.xlarge on SageMaker)")
    p.add_argument("--instance-count", type=int, default=backlog_plan.DEFAULT_INSTANCE_COUNT)
    p.add_argument("--concurrency-per-instance", type=int, default=None)
    p.add_argument("--images-per-job", type=int, default=backlog_plan.DEFAULT_IMAGES_PER_JOB)
    p.add_argument("--deadline-hours", type=float, default=None)
    p.add_argument("--assumed-images-per-second", type=float, default=None, help="per instance, until measured")
    p.add_argument("--images", type=int, default=None, help="price this many images instead of counting the range")
    p.add_argument("--incoming-uri", default="", help="template with {dt}; default <storage>/incoming/dt={dt}/")
    p.set_defaults(func=_estimate_backlog, reads_storage=True)

    p = sub.add_parser("predictions-summary", help="per-partition counts, labels and $/1000 images")
    p.add_argument("--from-date", required=True)
    p.add_argument("--to-date", required=True)
    p.add_argument("--demo-accuracy", action="store_true", help="score against the known digits of demo files")
    p.set_defaults(func=_predictions_summary, reads_storage=True)

    p = sub.add_parser("cost-report", help="write the daily cost table and chart under costs/reports/")
    p.add_argument("--day", help="last day of the report (default: today, UTC)")
    p.add_argument("--window-days", type=int, default=30)
    p.set_defaults(func=_cost_report, reads_storage=True)

    p = sub.add_parser("review-export", help="write the review queue as Label Studio tasks (JSON)")
    p.add_argument("--out", default="review-tasks.json", help="the tasks file to write")
    p.add_argument("--config", help="also write the Label Studio labeling config (XML) here")
    p.add_argument("--all", action="store_true", help="include images already reviewed")
    p.set_defaults(func=_review_export, reads_storage=True)

    p = sub.add_parser("review-import", help="record Label Studio annotations (its JSON export) as review decisions")
    p.add_argument("annotations", help="Label Studio's JSON export of the tasks review-export wrote")
    p.set_defaults(func=_review_import, reads_storage=True)

    p = sub.add_parser(
        "demo-annotate", help="answer Label Studio tasks of demo digits with their known labels (a perfect reviewer)"
    )
    p.add_argument("tasks", help="the tasks file review-export wrote")
    p.add_argument("--out", default="review-annotations.json", help="Label Studio's export, annotated")
    p.add_argument("--annotator", default="demo-reviewer@example.com", help="who Label Studio says annotated")
    p.set_defaults(func=_demo_annotate)

    p = sub.add_parser("review-enqueue-flags", help="queue a model version's likely mislabels for review")
    p.add_argument("version", help="a version under <storage>/models/ with a label_flags.jsonl")
    p.set_defaults(func=_review_enqueue_flags, reads_storage=True)

    p = sub.add_parser("production-accuracy", help="accuracy per ISO week from the reviewed golden sample, 95%% CI")
    p.add_argument("--demo-truth", action="store_true", help="demo digits: compare with every committed row's truth")
    p.set_defaults(func=_production_accuracy, reads_storage=True)

    p = sub.add_parser("preflight", help="read-only check of the AWS account before the first sagemaker run")
    p.add_argument("--airflow-role-arn", default=None, help="the Airflow workers' role; default: the caller's")
    p.set_defaults(func=_preflight)

    p = sub.add_parser("iam-policies", help="render include/aws/ policies for an account and these settings")
    p.add_argument("--account-id", required=True)
    p.add_argument("--out", default="iam-policies", help="directory to write the two policy documents into")
    p.set_defaults(func=_iam_policies)

    p = sub.add_parser("plan-training", help="size a SageMaker fine-tuning: steps, hours, checkpoints; or refuse it")
    p.add_argument("--images", type=int, required=True, help="curated images (split as curation splits them)")
    p.add_argument("--epochs", type=float, default=None, help="default: the SageMaker default hyperparameters'")
    p.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE)
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--max-run-seconds", type=int, default=DEFAULT_MAX_RUN_SECONDS)
    p.add_argument("--taxonomy", default="hotel", help="its label count sizes train.py's label-scoring pass")
    p.set_defaults(func=_plan_training)

    args = parser.parse_args(argv)
    try:
        _check_flags(args)
        args.func(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # a person reads this: one line, what went wrong; the traceback on request
        if os.environ.get("LLAVA_PIPELINES_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        command = (sys.argv[1:] if argv is None else argv)[0]  # the subcommand: argparse required one
        raise SystemExit(f"{prog} {command}: error: {message}") from None


if __name__ == "__main__":
    main()

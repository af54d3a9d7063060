"""`classify_images` through `bin/airflow dags test` on the local backend, against a real vLLM server:
three partitions, then reruns of one — committed rows equal the images listed, and a rerun reproduces them."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.digits import tiny_digits_model
from support.endpoints import committed, deploy_locally, stable
from tasks.common import storage
from tasks.common.settings import load_settings
from tasks.costs import ledger
from tasks.model.demo_data import write_incoming
from tasks.serving.local import state_path
from tasks.serving.local_server import stop_local_server
from tests.integration.conftest import AirflowRunner

pytestmark = pytest.mark.slow
DAYS = ["2026-11-02", "2026-11-03", "2026-11-04"]
# Small shards so each partition maps several; an untrained model answers garbage, so the gate only warns.
CONF = {"shard_size": 3, "concurrency": 2, "quality": {"on_violation": "warn"}}


@pytest.fixture(scope="module")
def airflow(local_airflow: AirflowRunner, tmp_path_factory: pytest.TempPathFactory) -> AirflowRunner:
    """The local Airflow with a storage root of its own: other DAG tests deploy and tear down endpoints too."""
    return AirflowRunner(local_airflow.env | {"PIPELINE_STORAGE_URI": tmp_path_factory.mktemp("storage").as_uri()})


@pytest.fixture(scope="module")
def deployed(airflow: AirflowRunner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A served untrained tiny model (accounting, not accuracy) and 5 digits a day, plus a broken and an OS file."""
    settings = load_settings(airflow.env)
    deploy_locally(settings, tiny_digits_model(tmp_path_factory.mktemp("classify") / "model"), "v-it")
    root = storage.root(settings)
    write_incoming(root / storage.INCOMING, DAYS, list(range(15)))
    first = Path(root.path) / storage.INCOMING / f"dt={DAYS[0]}"
    (first / "broken.png").write_bytes(b"not an image")
    (first / ".DS_Store").write_bytes(b"junk")
    yield Path(root.path)
    stop_local_server(state_path(settings))


def run(airflow: AirflowRunner, day: str, **conf) -> dict:
    result = airflow.dags_test("classify_images", conf=CONF | conf, logical_date=day)
    assert result.succeeded, result.output[-6000:]
    return ast.literal_eval(result.xcom("publish_partition"))


def test_three_partitions_then_reruns_reproduce_them(airflow: AirflowRunner, deployed: Path) -> None:
    for day in DAYS:
        event = run(airflow, day)
        manifest, rows = committed(deployed, day)
        images = sorted(p.name for p in (deployed / "incoming" / f"dt={day}").iterdir() if p.name != ".DS_Store")
        assert [row["key"] for row in rows] == images  # rows == images, each exactly once
        cost = event.pop("cost_usd")
        assert cost > 0 and event.pop("usd_per_1000_images") == pytest.approx(1000 * cost / len(images))
        assert event == {  # the asset event's extra, flat: what the run did, readable on the run in the UI
            "dt": day,
            "images": len(images),
            "classified": len(images),
            "carried": 0,
            **manifest["stats"]["statuses"],
            "quality": "passed" if manifest["quality"]["passed"] else "violated",
            "model_version": "v-it",
            "estimated_accuracy": None,  # the test's model was registered without a calibration
        }
        assert sum(manifest["stats"]["statuses"].values()) == manifest["rows"] == len(images)
        assert all(row["status"] in ("ok", "invalid") for row in rows if row["key"] != "broken.png")
    _, rows = committed(deployed, DAYS[0])
    assert next(r for r in rows if r["key"] == "broken.png")["status"] == "rejected"

    costs_root = storage.storage_path(f"file://{deployed}/costs")
    rows = ledger.query(costs_root, "SELECT kind, key, images, billable_seconds FROM ledger ORDER BY kind, key")
    assert [(r["kind"], r["key"]) for r in rows] == [("classification", d) for d in DAYS] + [
        ("endpoint_idle", f"llava-classifier/{d}") for d in DAYS
    ]
    assert [r["images"] for r in rows[:3]] == [6, 5, 5] and all(r["billable_seconds"] > 0 for r in rows[:3])
    assert (deployed / "costs" / "reports" / f"day={DAYS[-1]}" / "costs.png").is_file()

    # Rerun: final rows (ok, rejected) are carried over byte for byte; invalid ones are asked again (issue 9), and
    # greedy answers of the same model give the same rows.
    manifest, before = committed(deployed, DAYS[0])
    run(airflow, DAYS[0])
    again, after = committed(deployed, DAYS[0])
    final = lambda rows: [r for r in rows if r["status"] in ("ok", "rejected")]  # noqa: E731
    assert final(after) == final(before) and stable(after) == stable(before)
    assert again["carried"] == len(final(before)) and again["rows"] == 6 and again["run"] != manifest["run"]
    # Reprocess: every image asked again; greedy answers of the same model are the same rows.
    run(airflow, DAYS[0], reclassify=True)
    third, after = committed(deployed, DAYS[0])
    assert third["classified"] == 6 and stable(after) == stable(before)
    runs = [p.name for p in (deployed / "predictions" / f"dt={DAYS[0]}").iterdir() if p.name.startswith("run=")]
    assert runs == [f"run={third['run']}"]  # replaced runs deleted: no stale file for a glob to pick up


def test_a_day_without_images_commits_an_empty_partition(airflow: AirflowRunner, deployed: Path) -> None:
    assert run(airflow, "2026-11-20") == {
        "dt": "2026-11-20",
        "images": 0,
        "classified": 0,
        "carried": 0,
        **{"failed": 0, "invalid": 0, "ok": 0, "rejected": 0},
        "quality": "no data",  # never "passed": there was nothing to judge
        "model_version": "v-it",
        "cost_usd": 0.0,
        "usd_per_1000_images": None,
        "estimated_accuracy": None,  # nothing was classified
    }
    manifest, rows = committed(deployed, "2026-11-20")
    assert (manifest["listed"], manifest["files"], rows) == (0, [], [])


def test_a_day_before_the_start_date_says_nothing_ran(airflow: AirflowRunner, deployed: Path) -> None:
    """Issue 9, defect 9: Airflow creates no tasks for a manual run before the DAG's start date; the run says so."""
    result = airflow.dags_test("classify_images", conf=CONF, logical_date="2026-10-15")
    assert "NOTHING RAN in manual__" in result.output, result.output[-4000:]
    assert "so the run is marked failed" in result.output  # its note (no API server under dags test: logged)
    assert "backfill create --dag-id classify_images --from-date" in result.output

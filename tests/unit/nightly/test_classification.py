"""A partition classified end to end at the tasks level — plan, shards, collect, publish — against a real HTTP server
that throttles, fails, times out and answers garbage: every image is accounted for exactly once, reruns replace the
partition atomically and skip what the same model version already classified."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from support.endpoints import endpoint_record, stable
from tasks.common.storage import storage_path
from tasks.nightly import predictions
from tasks.nightly.classification import PartitionJob, classify_shard, collect_shards, publish
from tasks.nightly.partitions import PartitionPlan, plan_partition
from tasks.nightly.predictions import PublishConflict
from tasks.records.endpoint import EndpointRecord
from tests.conftest import encode
from tests.fault_server import EXPECTED, FAST, SCRIPTS, ScriptedServer, scripted_server, sized_image

DT = "2026-11-02"


def uri(path: Path) -> str:
    return f"file://{path}"  # Path.as_uri() would escape the "=" of dt=…


def at(path: Path):
    return storage_path(uri(path))


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with scripted_server() as srv:
        yield srv


def scripted(server: ScriptedServer, model_version: str = "v1") -> dict:
    """The scripted server as a deployed endpoint; images go out unchanged (the server reads their size)."""
    return endpoint_record(server.url, model_version=model_version, max_image_tokens=None)


@dataclass
class Partition:
    incoming: Path
    out: Path

    def run(self, record: EndpointRecord, *, reclassify: bool = False) -> tuple[PartitionPlan, dict]:
        """What the DAG does for one dt, minus Airflow: plan → classify every shard → collect → publish."""
        plan = plan_partition(
            at(self.incoming),
            at(self.out),
            dt=DT,
            model_version=record.model_version,
            shard_size=16,
            reclassify=reclassify,
        )
        job = self.job(plan, record)
        staged = collect_shards(plan, [classify_shard(job, shard) for shard in plan.shards])
        return plan, publish(job, plan, staged, quality={"passed": True})

    def job(self, plan: PartitionPlan, record: EndpointRecord) -> PartitionJob:
        return PartitionJob(
            dt=DT,
            incoming_uri=uri(self.incoming),
            partition_uri=uri(self.out),
            run_token=plan.run_token,
            record=record,
            concurrency=4,
            conn_id="aws_default",
            client_options=FAST,
            max_consecutive_failures=1000,
        )

    def rows(self) -> list[dict]:
        return predictions.read_partition(at(self.out)).sort_by("key").to_pylist()

    def stable_rows(self) -> list[dict]:
        return stable(self.rows())


@pytest.fixture
def partition(tmp_path: Path) -> Partition:
    """60 images whose widths script their fate, one corrupt file, one OS file to ignore."""
    incoming = tmp_path / "incoming" / f"dt={DT}"
    incoming.mkdir(parents=True)
    # A distinct size per image (the server counts attempts per size), within the tiny model's largest tile (64 px)
    # so the client sends it unchanged.
    sizes = random.Random(7).sample([(w, h) for w in SCRIPTS for h in range(16, 64)], 60)
    for i, size in enumerate(sizes):
        (incoming / f"img-{i:02d}.png").write_bytes(sized_image(*size))
    (incoming / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (incoming / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return Partition(incoming, tmp_path / "predictions" / f"dt={DT}")


def width_of(partition: Partition, key: str) -> int:
    from PIL import Image

    return Image.open(partition.incoming / key).width


def test_every_image_is_accounted_for_exactly_once_despite_a_faulty_endpoint(partition, server):
    plan, manifest = partition.run(scripted(server))

    rows = partition.rows()
    keys = sorted(p.name for p in partition.incoming.iterdir() if p.name != ".DS_Store")
    assert [row["key"] for row in rows] == keys  # each image once, none twice, the ignored file not at all
    assert (plan.listed, plan.ignored, manifest["rows"], len(plan.shards)) == (62, 1, 61, 4)
    by_key = {row["key"]: row for row in rows}
    corrupt = by_key.pop("corrupt.jpg")
    assert corrupt["status"] == "rejected" and "corrupt" in corrupt["reason"] and corrupt["content_sha256"]
    for key, row in by_key.items():
        assert (row["status"], row["attempts"]) == EXPECTED[width_of(partition, key)], (key, row)
        assert row["model_version"] == "v1" and row["endpoint"] == "llava-classifier"
        assert (row["reason"] is None) == (row["status"] == "ok")
    statuses = manifest["stats"]["statuses"]
    assert sum(statuses.values()) == manifest["rows"] and statuses["ok"] and statuses["failed"] and statuses["invalid"]
    assert sum(f["rows"] for f in manifest["files"]) == manifest["rows"]
    assert (
        manifest["busy_seconds"] > 0
        and manifest["stats"]["prompt_tokens"] == 80 * statuses["ok"] + 80 * (statuses["invalid"])
    )


def test_a_rerun_carries_final_rows_retries_failed_and_invalid_ones_and_replaces_the_partition(partition, server):
    _, first = partition.run(scripted(server))
    before = partition.stable_rows()
    retried = first["stats"]["statuses"]["failed"] + first["stats"]["statuses"]["invalid"]

    plan, second = partition.run(scripted(server))

    assert (plan.carried, plan.to_classify) == (61 - retried, retried)  # only failed and invalid rows asked again
    assert partition.stable_rows() == before  # same scripted answers: same rows, none duplicated
    assert second["busy_seconds"] > 0
    runs = sorted(p.name for p in partition.out.iterdir() if p.name.startswith("run="))
    assert runs == [f"run={plan.run_token}"]  # the replaced run's files are gone

    _, third = partition.run(scripted(server), reclassify=True)
    assert third["carried"] == 0 and third["classified"] == 61
    statuses = lambda rows: [(r["key"], r["status"], r["label"]) for r in rows]  # noqa: E731
    assert statuses(partition.stable_rows()) == statuses(before)


def test_a_new_model_version_or_a_changed_file_is_classified_again(partition, server):
    partition.run(scripted(server))
    assert partition.run(scripted(server, "v2"))[0].carried == 0
    assert {row["model_version"] for row in partition.rows()} == {"v2"}

    (partition.incoming / "img-00.png").write_bytes(sized_image(40, 99))  # rewritten: new size and version
    (partition.incoming / "img-01.png").unlink()  # gone: its row goes too
    plan, manifest = partition.run(scripted(server, "v2"))
    assert plan.to_classify >= 1 and manifest["rows"] == 60
    by_key = {row["key"]: row for row in partition.rows()}
    assert "img-01.png" not in by_key and by_key["img-00.png"]["source_size"] == len(sized_image(40, 99))


def test_an_image_that_vanishes_after_planning_is_a_rejected_row(partition, server):
    record = scripted(server)
    plan = plan_partition(at(partition.incoming), at(partition.out), dt=DT, model_version="v1", shard_size=100)
    (partition.incoming / "img-05.png").unlink()
    [result] = [classify_shard(partition.job(plan, record), shard) for shard in plan.shards]
    assert result.rows == 61
    row = next(
        r for r in predictions.read_table(at(partition.out) / result.path).to_pylist() if r["key"] == "img-05.png"
    )
    assert row["status"] == "rejected" and row["reason"].startswith("unreadable: FileNotFoundError")


def test_an_unpublished_run_is_invisible_and_a_broken_commit_changes_nothing(partition, server):
    record = scripted(server)
    partition.run(record)
    committed = partition.rows()

    plan = plan_partition(
        at(partition.incoming), at(partition.out), dt=DT, model_version="v1", shard_size=16, reclassify=True
    )
    job = partition.job(plan, record)
    results = [classify_shard(job, shard) for shard in plan.shards]
    assert partition.rows() == committed  # classified but not published: readers still see the old version

    staged = collect_shards(plan, results)
    (partition.out / results[0].path).unlink()  # e.g. removed by a concurrent run of the same dt
    with pytest.raises(PublishConflict, match="listed file"):  # AirflowFailException: a retry cannot help
        publish(job, plan, staged, quality={})
    assert partition.rows() == committed


def test_collect_refuses_when_a_shard_lost_rows(partition, server):
    record = scripted(server)
    plan = plan_partition(at(partition.incoming), at(partition.out), dt=DT, model_version="v1", shard_size=32)
    results = [classify_shard(partition.job(plan, record), shard) for shard in plan.shards]
    with pytest.raises(RuntimeError, match="expected results of shards"):
        collect_shards(plan, results[:1])
    short = results[0].__class__(**{**results[0].__dict__, "rows": results[0].rows - 1})
    with pytest.raises(RuntimeError, match="wrote 31 rows for 32 images"):
        collect_shards(plan, [short, *results[1:]])


def test_collect_ignores_results_of_another_attempt(partition, server):
    """What a cleared run hands over when it now maps fewer shards: the old attempt's results, too."""
    record = scripted(server)
    old = plan_partition(at(partition.incoming), at(partition.out), dt=DT, model_version="v1", shard_size=100)
    stale = [classify_shard(partition.job(old, record), shard) for shard in old.shards]
    # reclassify: else the new plan carries the old attempt's final rows (test_resume.py)
    new = plan_partition(
        at(partition.incoming), at(partition.out), dt=DT, model_version="v1", shard_size=100, reclassify=True
    )
    fresh = [classify_shard(partition.job(new, record), shard) for shard in new.shards]
    assert collect_shards(new, stale + fresh).files == [{"path": fresh[0].path, "rows": 61}]


def test_a_hostile_partition_commits_one_row_per_entry_and_reads_nothing_outside(tmp_path, server):
    """Issue 9, defects 3-5: links, a FIFO, a non-UTF-8 name and a bomb each get a rejected row; nothing is
    followed, nothing blocks, nothing crashes plan_partition."""
    incoming = tmp_path / "incoming" / f"dt={DT}"
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "elsewhere.png").write_bytes(sized_image(40, 20))
    (outside / "dir" / "inner.png").write_bytes(sized_image(40, 21))
    incoming.mkdir(parents=True)
    (incoming / "good.png").write_bytes(sized_image(40, 22))
    (incoming / "passwd.jpg").symlink_to("/etc/passwd")
    (incoming / "outside-image.png").symlink_to(outside / "elsewhere.png")
    (incoming / "linked-dir").symlink_to(outside / "dir")
    os.mkfifo(incoming / "fifo.png")
    with open(os.path.join(os.fsencode(incoming), b"caf\xe9.png"), "wb") as f:
        f.write(sized_image(40, 23))
    (incoming / "bomb.png").write_bytes(encode(Image.new("P", (7000, 7000)), optimize=True))
    part = Partition(incoming, tmp_path / "predictions" / f"dt={DT}")

    plan, manifest = part.run(scripted(server))

    rows = {row["key"]: row for row in part.rows()}
    assert (plan.listed, plan.ignored, manifest["rows"]) == (7, 0, 7) and len(rows) == 7  # listed == rows
    assert rows["good.png"]["status"] == "ok"
    expected = {
        "passwd.jpg": "symlink",
        "outside-image.png": "symlink",
        "linked-dir": "symlink",
        "fifo.png": "special file",
        "caf\\xe9.png": "unsafe file name",
        "bomb.png": "decompression bomb",
    }
    for key, reason in expected.items():
        assert rows[key]["status"] == "rejected" and reason in rows[key]["reason"], rows[key]
    assert b"caf\xe9.png".hex() in rows["caf\\xe9.png"]["reason"]  # the raw name is preserved
    for key in ("passwd.jpg", "outside-image.png", "linked-dir", "fifo.png", "caf\\xe9.png"):
        assert rows[key]["content_sha256"] is None  # never read
    assert server.attempts[(40, 20)] == server.attempts[(40, 21)] == 0  # outside images never classified

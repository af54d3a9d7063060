"""The helpers bin/demo and bin/demo-backfill use against the local Airflow."""

from __future__ import annotations

from pathlib import Path

from tasks.common.local_airflow import write_test_task_logs

RUN = "manual__2026-12-01T09:53:00.593445+00:00"


def block(task: str, map_index: int, body: str) -> str:
    return (
        f"t0 [info] [DAG TEST] starting task_id={task} map_index={map_index} [dag] loc=dag.py:1501\n"
        f"t0 [info] [DAG TEST] running task <TaskInstance: demo.{task} {RUN} [TaskInstanceState.SCHEDULED] ti_id=x>\n"
        f"{body}\n"
        f"t1 [info] [DAG TEST] end task task_id={task} map_index={map_index} [dag] loc=dag.py:1563\n"
    )


def test_dags_test_output_becomes_one_log_file_per_task_attempt(tmp_path: Path) -> None:
    output = "parsing noise\n" + block("plan", -1, "planned 3") + block("shard", 1, "shard one") + "between\n"
    output += block("plan", -1, "second try")
    written = write_test_task_logs(output, tmp_path)
    base = tmp_path / "dag_id=demo" / f"run_id={RUN}"
    assert written == [
        base / "task_id=plan" / "attempt=1.log",
        base / "task_id=shard" / "map_index=1" / "attempt=1.log",
        base / "task_id=plan" / "attempt=2.log",
    ]
    assert "planned 3" in written[0].read_text() and "second try" not in written[0].read_text()
    assert "shard one" in written[1].read_text() and "parsing noise" not in written[1].read_text()
    assert "second try" in written[2].read_text()


def test_a_block_without_its_task_instance_line_writes_nothing(tmp_path: Path) -> None:
    output = "[DAG TEST] starting task_id=plan map_index=-1\nno ti line\n[DAG TEST] end task task_id=plan\n"
    assert write_test_task_logs(output, tmp_path) == []

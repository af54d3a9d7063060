"""bin/airflow: an Airflow home that was copied or moved writes its logs into itself, not into the clone it came from;
its SQLite database is shared safely by the four processes of a local Airflow.

Airflow writes absolute paths into the airflow.cfg it generates on first use; bin/airflow overrides every one of them
(dags, plugins, the SQLite DB, and the two log folders) relative to AIRFLOW_HOME unless the variable is already set.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# What Airflow 3.3 writes into a generated airflow.cfg as an absolute path: the original clone's, once copied.
STALE = {
    ("core", "dags_folder"): "/original/clone/dags",
    ("core", "plugins_folder"): "/original/clone/plugins",
    ("logging", "base_log_folder"): "/original/clone/.airflow/logs",
    ("logging", "dag_processor_child_process_log_directory"): "/original/clone/.airflow/logs/dag_processor",
}


def _bin_airflow(home: Path, *args: str) -> str:
    env = {name: value for name, value in os.environ.items() if not name.startswith("AIRFLOW__")}
    result = subprocess.run(
        [str(REPO_ROOT / "bin" / "airflow"), *args],
        env={**env, "AIRFLOW_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _config_value(home: Path, section: str, key: str) -> str:
    return _bin_airflow(home, "config", "get-value", section, key)


@pytest.mark.slow
def test_a_copied_home_with_stale_absolute_log_paths_logs_into_itself(tmp_path: Path) -> None:
    home = tmp_path / "copied" / ".airflow"
    home.mkdir(parents=True)
    sections: dict[str, list[str]] = {}
    for (section, key), value in STALE.items():
        sections.setdefault(section, []).append(f"{key} = {value}")
    (home / "airflow.cfg").write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()))
    assert _config_value(home, "logging", "base_log_folder") == str(home / "logs")
    assert _config_value(home, "logging", "dag_processor_child_process_log_directory") == str(
        home / "logs" / "dag_processor"
    )
    assert not (home / "airflow.db").exists()  # a config query reads settings only: nothing is migrated


@pytest.mark.slow
def test_the_sqlite_database_is_migrated_into_write_ahead_log_mode(tmp_path: Path) -> None:
    """Stop 29's CI: in the default rollback journal a backfill's write lost the lock (a 503) and the local scheduler
    exited on a loaded machine. The mode is stored in the file, so every Airflow process opens it in WAL."""
    home = tmp_path / ".airflow"
    assert _bin_airflow(home, "version").startswith("3.")  # the first call migrates the database
    with contextlib.closing(sqlite3.connect(home / "airflow.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert "airflow.db: journal_mode=wal" in (home / "bootstrap.log").read_text()

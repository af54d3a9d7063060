"""The stack's guarantees, checked without Airflow: nothing outlives stop(), throwaway databases are thrown away."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psycopg2
import pytest
import redis

from tests.e2e import backing_services
from tests.e2e.processes import MARKER_VAR, ManagedProcess, find_processes, stop

# A leader that spawns one child in its group and one that escapes into a new session, like Airflow's task runner
# moving tasks to their own process group; the leader ignores SIGTERM, so only SIGKILL ends it.
ESCAPING_TREE = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
time.sleep(300)
"""


def test_stop_leaves_no_process_even_when_children_escape_the_group(tmp_path: Path) -> None:
    marker = "helpers-" + os.urandom(4).hex()
    proc = ManagedProcess("tree", [sys.executable, "-c", ESCAPING_TREE], tmp_path / "tree.log")
    proc.start({**os.environ, MARKER_VAR: marker}, tmp_path)
    deadline = time.monotonic() + 10
    while len(find_processes(marker, [proc.pid])) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    running = find_processes(marker, [proc.pid])
    assert len(running) == 3 and proc.pid in running
    assert len({os.getpgid(pid) for pid in running}) == 2  # one child escaped the leader's group

    assert stop([proc], marker, grace_s=1) == []
    assert find_processes(marker, [proc.pid]) == []
    assert proc.exit_code() is not None


def test_postgres_database_is_dropped_even_with_a_client_connected() -> None:
    with backing_services.postgres_database() as name:
        assert backing_services.postgres_database_exists(name)
        client = psycopg2.connect(host=backing_services.PG_HOST, user=backing_services.PG_USER, dbname=name)
    assert not backing_services.postgres_database_exists(name)
    with pytest.raises(psycopg2.OperationalError):  # the server ended the session
        client.cursor().execute("SELECT 1")
    client.close()


def test_redis_database_is_private_and_flushed() -> None:
    with backing_services.redis_database() as index:
        client = redis.Redis(host=backing_services.REDIS_HOST, port=backing_services.REDIS_PORT, db=index)
        assert index != 0
        client.set("probe", "1")
    assert client.dbsize() == 0
    client.close()

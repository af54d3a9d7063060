"""The local Airflow's SQLite metadata database, in write-ahead-log mode for the four processes that share it.

In SQLite's default rollback journal a commit must wait for every reader to finish and blocks new readers meanwhile,
so the API server, scheduler, dag-processor and triggerer, each polling the database, keep colliding: on a loaded
2-core machine a backfill's write lost the lock (`database is locked`, a 503 from the API server) and the scheduler
exited. With WAL, readers and the one writer proceed side by side (https://www.sqlite.org/wal.html).
bin/airflow switches a SQLite database to WAL once, after `airflow db migrate`; the mode is stored in the file, so
every process opens it that way. PostgreSQL needs none of this.

pysqlite's 5 s busy timeout is kept on purpose: with 60 s (`[database] sql_alchemy_connect_args`) the API server
stopped answering for over a minute under load, every request waiting its turn, until the e2e test's client gave up.

Run as `python -m tasks.common.local_sqlite SQL_ALCHEMY_CONN` (a no-op for any other database).
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"


def database_path(sql_alchemy_conn: str) -> Path | None:
    """The file behind a `sqlite:////abs/path.db` URL; None for any other database."""
    if not sql_alchemy_conn.startswith(SQLITE_PREFIX):
        return None
    return Path(sql_alchemy_conn.removeprefix(SQLITE_PREFIX).split("?", 1)[0])


def use_write_ahead_log(path: Path) -> str:
    """Switch the database file to WAL (persistent, idempotent); returns the journal mode SQLite reports."""
    db = sqlite3.connect(path)
    try:
        (mode,) = db.execute("PRAGMA journal_mode=WAL").fetchone()
    finally:
        db.close()
    if mode != "wal":
        raise RuntimeError(f"{path}: SQLite kept journal_mode={mode} (WAL needs a local filesystem)")
    return mode


def main(argv: list[str]) -> int:
    (sql_alchemy_conn,) = argv
    path = database_path(sql_alchemy_conn)
    if path is not None:
        print(f"{path}: journal_mode={use_write_ahead_log(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

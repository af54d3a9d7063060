"""Throwaway PostgreSQL databases and Redis logical databases on the machine's own servers.

Every stack gets its own, so concurrent test runs (or other projects on the same servers) never share state.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
_CLAIM_KEY = "airflow-e2e-claim"


def _admin_connection():
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return conn


@contextmanager
def postgres_database(prefix: str = "airflow_e2e") -> Iterator[str]:
    """Create an empty database; yield its name; drop it even if clients are still connected."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = _admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def postgres_database_exists(name: str) -> bool:
    conn = _admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


@contextmanager
def redis_database() -> Iterator[int]:
    """Claim an empty Redis logical database (1-15, never the shared 0); yield its index; flush it afterwards."""
    import redis

    token = uuid.uuid4().hex
    for index in random.sample(range(1, 16), 15):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index, socket_timeout=5)
        if client.dbsize() == 0 and client.set(_CLAIM_KEY, token, nx=True):
            break
        client.close()
    else:
        raise RuntimeError(f"no empty Redis database on {REDIS_HOST}:{REDIS_PORT} (1-15 are all in use)")
    try:
        yield index
    finally:
        client.flushdb()
        client.close()

"""A real Airflow 3.3 deployment in separate processes, launched through `bin/airflow`, for end-to-end tests.

Two shapes, picked by `StackConfig`: LocalExecutor on SQLite (the laptop default) and CeleryExecutor on
PostgreSQL + Redis (production-shaped). Everything lives in a temporary AIRFLOW_HOME, a throwaway database, free
ports and a storage root of its own; `stop()` leaves no process behind.

Use the `airflow_stack` fixture (indirect parametrisation with a `StackConfig`, default LocalExecutor/SQLite), or
`running_stack()` for a fixture of another scope.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeVar

import httpx
import pytest

from tasks.common.local_airflow import WaitTimeout, read_health, wait_for
from tests.e2e import backing_services
from tests.e2e.processes import MARKER_VAR, ManagedProcess, describe, free_port, stop

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = REPO_ROOT / "bin" / "airflow"
ADMIN_USER = "admin"
VIEWER_USER = "viewer"  # role Viewer: may look at everything, change nothing
_SERVER_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
_HEALTH_PARTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
# Deadlines for a stuck stack, not estimates: every wait follows the stack's own state (health, a DAG in the API, a
# run's state), logs progress every 15 s and fails at once when a component exits. Measured on 2 idle cores: the
# migration ~5 s, every component healthy ~15-25 s, the project's DAGs parsed ~10-20 s after that; a saturated
# machine stretches each several times over, so each deadline is 10x or more the idle figure.
STACK_READY_DEADLINE_S = 300.0  # `bin/airflow version` (migrate) and then every component healthy, each
DAG_PARSED_DEADLINE_S = 300.0  # the dag-processor has serialised a DAG, so the API knows it
T = TypeVar("T")


@dataclass(frozen=True)
class StackConfig:
    """Which deployment to start. `env` adds or overrides variables for every component."""

    executor: Literal["LocalExecutor", "CeleryExecutor"] = "LocalExecutor"
    database: Literal["sqlite", "postgres"] = "sqlite"
    env: tuple[tuple[str, str], ...] = ()
    parallelism: int = 2

    @property
    def id(self) -> str:
        return f"{self.executor.removesuffix('Executor').lower()}-{self.database}"


LOCAL_SQLITE = StackConfig()
# The nightly DAG's catchup starts tomorrow: unpausing it schedules no night by itself, not even the one that closes
# when a test crosses midnight UTC (CI's stop 29 failed on exactly that). Backfills still reach any earlier day.
NO_SCHEDULED_NIGHTS = StackConfig(
    env=(("PIPELINE_CLASSIFY_START_DATE", (datetime.now(UTC) + timedelta(days=1)).date().isoformat()),)
)
CELERY_POSTGRES = StackConfig(executor="CeleryExecutor", database="postgres")


class StackError(RuntimeError):
    """The stack did not come up (or went down); the message carries the component logs."""


@dataclass
class AirflowStack:
    """One deployment: its settings, its processes and an authenticated way into its REST API."""

    config: StackConfig
    home: Path
    storage_root: Path
    api_port: int = field(default_factory=free_port)
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    queue: str = field(default_factory=lambda: f"e2e_{uuid.uuid4().hex[:8]}")
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    viewer_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    components: list[ManagedProcess] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def storage_uri(self) -> str:
        return self.storage_root.as_uri()

    @property
    def logs_dir(self) -> Path:
        return self.home / "component-logs"

    def component(self, name: str) -> ManagedProcess:
        return next(c for c in self.components if c.name == name)

    # -- configuration -------------------------------------------------------------------------------------

    def build_env(self, sql_alchemy_conn: str, celery_broker: str | None) -> None:
        """The environment every component shares: the project's launcher applies it on top of its defaults."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINE_"))}
        passwords = self.home / "passwords.json"
        passwords.write_text(json.dumps({ADMIN_USER: self.password, VIEWER_USER: self.viewer_password}))
        self.env = base | {
            MARKER_VAR: self.marker,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": self.config.executor,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
            "AIRFLOW__CORE__PARALLELISM": str(self.config.parallelism),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin,{VIEWER_USER}:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "PIPELINE_BACKEND": "local",
            "PIPELINE_STORAGE_URI": self.storage_uri,
        }
        if celery_broker:
            self.env |= {
                "AIRFLOW__CELERY__BROKER_URL": celery_broker,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + sql_alchemy_conn,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            }
        self.env |= dict(self.config.env)

    def _commands(self) -> dict[str, list[str]]:
        launcher = str(LAUNCHER)
        commands = {name: [launcher, name] for name in _SERVER_COMPONENTS}
        commands["api-server"] += ["--host", "127.0.0.1", "--port", str(self.api_port)]
        if self.config.executor == "CeleryExecutor":
            commands["celery-worker"] = [
                *(launcher, "celery", "worker", "--queues", self.queue, "--concurrency", "1"),
                *("--celery-hostname", f"{self.queue}@%h", "--without-gossip", "--without-mingle"),
            ]
        return commands

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, deadline_s: float = STACK_READY_DEADLINE_S) -> None:
        """Migrate once, then start every component in parallel and wait until all report healthy."""
        bootstrap = ManagedProcess("bootstrap", [str(LAUNCHER), "version"], self.logs_dir / "bootstrap.log")
        bootstrap.start(self.env, REPO_ROOT)
        exited = self.wait(
            bootstrap.exit_code,
            "bin/airflow version (migrate, import connections)",
            deadline_s,
            "STACK_READY_DEADLINE_S",
        )
        if exited != 0:
            raise StackError(f"bin/airflow bootstrap failed:\n{bootstrap.log_tail()}")
        for name, argv in self._commands().items():
            proc = ManagedProcess(name, argv, self.logs_dir / f"{name}.log")
            self.components.append(proc)
            proc.start(self.env, REPO_ROOT)
        last = ["no answer yet"]
        self.wait(
            lambda: self._healthy(last),
            "the API server to report every component healthy",
            deadline_s,
            "STACK_READY_DEADLINE_S",
            lambda: last[0],
        )
        if self.config.executor == "CeleryExecutor":
            worker = self.component("celery-worker")
            self.wait(
                lambda: " ready." in worker.log_text(),
                "the Celery worker to be ready",
                deadline_s,
                "STACK_READY_DEADLINE_S",
            )

    def wait(
        self,
        check: Callable[[], T | None],
        what: str,
        deadline_s: float,
        deadline_name: str,
        describe: Callable[[], str] = lambda: "",
    ) -> T:
        """`check()` until it returns something (not None/False), with a progress line every 15 s; fails at once
        when a component has exited, and with every component's log tail at the deadline."""

        def guarded() -> T | None:
            self.raise_if_down()
            return check()

        try:
            return wait_for(guarded, what=what, deadline_s=deadline_s, deadline_name=deadline_name, describe=describe)
        except WaitTimeout as error:
            raise StackError(f"{error}\n{self.diagnostics()}") from None

    def wait_for_dags(self, api: httpx.Client, *dag_ids: str, deadline_s: float = DAG_PARSED_DEADLINE_S) -> None:
        """Until the dag-processor has serialised every one of `dag_ids` (the API answers 200 for each)."""
        missing = list(dag_ids)

        def parsed() -> bool:
            missing[:] = [dag_id for dag_id in missing if api.get(f"/dags/{dag_id}").status_code != 200]
            return not missing

        self.wait(
            parsed,
            f"{', '.join(dag_ids)} to be parsed",
            deadline_s,
            "DAG_PARSED_DEADLINE_S",
            lambda: f"missing {missing}",
        )

    def _healthy(self, last: list[str]) -> bool:
        health, last[0] = read_health(self.api_url, _HEALTH_PARTS)
        return health is not None

    def raise_if_down(self) -> None:
        """Fail fast, with logs, as soon as any component has exited."""
        dead = [c for c in self.components if c.exit_code() is not None]
        if dead:
            names = ", ".join(f"{c.name} (exit {c.exit_code()})" for c in dead)
            raise StackError(f"component(s) exited: {names}\n{self.diagnostics()}")

    def stop(self) -> list[int]:
        """Stop every component and whatever it spawned; returns pids that survived (should be none)."""
        return stop(self.components, self.marker)

    def diagnostics(self, lines: int = 60) -> str:
        """The tail of every component log, for failure messages."""
        parts = [f"===== {c.name} ({c.log_path}) =====\n{c.log_tail(lines)}" for c in self.components]
        return "\n".join(parts)

    # -- REST API ------------------------------------------------------------------------------------------

    def token(self, user: str = ADMIN_USER) -> str:
        """A JWT for the admin (or the viewer) user (cached; valid for the API's default 24 h)."""
        if user not in self._tokens:
            password = {ADMIN_USER: self.password, VIEWER_USER: self.viewer_password}[user]
            response = httpx.post(
                f"{self.api_url}/auth/token",
                json={"username": user, "password": password},
                timeout=60,
            )
            response.raise_for_status()
            self._tokens[user] = response.json()["access_token"]
        return self._tokens[user]

    def client(self) -> httpx.Client:
        """An authenticated client for the public REST API (`/api/v2/...`)."""
        return httpx.Client(
            base_url=f"{self.api_url}/api/v2", headers={"Authorization": f"Bearer {self.token()}"}, timeout=30
        )


def _sql_alchemy_conn(config: StackConfig, home: Path, resources: ExitStack) -> str:
    if config.database == "sqlite":
        return f"sqlite:///{home / 'airflow.db'}"
    db = resources.enter_context(backing_services.postgres_database())
    return (
        f"postgresql+psycopg2://{backing_services.PG_USER}@{backing_services.PG_HOST}:{backing_services.PG_PORT}/{db}"
    )


def _celery_broker(config: StackConfig, resources: ExitStack) -> str | None:
    if config.executor != "CeleryExecutor":
        return None
    index = resources.enter_context(backing_services.redis_database())
    return f"redis://{backing_services.REDIS_HOST}:{backing_services.REDIS_PORT}/{index}"


@contextmanager
def running_stack(config: StackConfig, base: Path) -> Iterator[AirflowStack]:
    """Provision, start, and finally stop and clean up a stack under `base`; for fixtures of any scope.

    Raises StackError at exit if any process outlived stop().
    """
    stack = AirflowStack(config=config, home=base / "home", storage_root=base / "storage")
    stack.home.mkdir(parents=True)
    stack.storage_root.mkdir()
    with ExitStack() as resources:  # unwinds in reverse: stop processes, then drop the databases
        stack.build_env(_sql_alchemy_conn(config, stack.home, resources), _celery_broker(config, resources))
        resources.callback(_stop_or_fail, stack)
        stack.start()
        yield stack


def _stop_or_fail(stack: AirflowStack) -> None:
    survivors = stack.stop()
    if survivors:
        raise StackError(f"processes survived stop():\n{describe(survivors)}")


@pytest.fixture
def airflow_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    """A started stack; `request.param` (indirect parametrisation) picks the `StackConfig`."""
    config: StackConfig = getattr(request, "param", LOCAL_SQLITE)
    with running_stack(config, tmp_path_factory.mktemp(f"airflow-{config.id}")) as stack:
        yield stack

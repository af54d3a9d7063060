"""Take an endpoint down completely: the manual off switch of deploy_endpoint."""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from tasks.common.dag_defaults import SETTINGS, TAGS, default_args
from tasks.serving import steps
from tasks.serving.deployment import DEFAULT_ENDPOINT_NAME

SERVING = steps.serving_backend(SETTINGS)

DOC = """
### Teardown endpoint
Removes the endpoint record first (so `classify_images` stops calling it), then everything behind the endpoint.
**SageMaker**: autoscaling target and policy, the endpoint, and every endpoint config and model tagged with its
name — including ones a crashed run leaked. **Local**: the vLLM server and all its processes.

**Runbook**
- Safe to rerun; a missing endpoint or server is not an error.
- **tear_down failed with "still Updating"**: a deploy is rolling; let it finish (or fail), then rerun.
- Deploying again later: trigger `deploy_endpoint`; nothing from the old endpoint is reused.
"""


@dag(
    dag_id="teardown_endpoint",
    description="Removes the endpoint record, then the serving endpoint and everything behind it.",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=[*TAGS, "serving"],
    doc_md=DOC,
    default_args=default_args(),
    params={"endpoint_name": Param(DEFAULT_ENDPOINT_NAME, type="string", description="The endpoint to remove.")},
)
def teardown_endpoint():
    @task(doc_md="Delete `serving/endpoint.json` if it names this endpoint, so no one calls it any more.")
    def forget_endpoint(params: dict | None = None) -> bool:
        return steps.forget_endpoint(SETTINGS, params["endpoint_name"])

    forget_endpoint() >> SERVING.tear_down()


teardown_endpoint()

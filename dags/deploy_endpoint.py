"""Serve the promoted model behind an endpoint (pipeline 3 of 4)."""

from __future__ import annotations

from airflow.sdk import Param, TriggerRule, chain, dag, task

from tasks.common.assets import PROMOTED_MODEL, SERVING_ENDPOINT
from tasks.common.dag_defaults import SETTINGS, TAGS, default_args
from tasks.serving import steps
from tasks.serving.deployment import DEFAULT_ENDPOINT_NAME, DEFAULT_INSTANCE_TYPE
from tasks.serving.local_server import READY_DEADLINE_S

SERVING = steps.serving_backend(SETTINGS)

DOC = """
### Deploy endpoint
Serves the registry's production model (or the `model_version` param) and, once a known image comes back as a
taxonomy label, records it in `<storage>/serving/endpoint.json` and emits the **serving_endpoint** asset, which
the nightly `classify_images` reads. Runs on every **promoted_model** event, or manually.

**SageMaker**: `serving.properties` (from `include/serving/serving.properties`) → `model.tar.gz` in
`<storage>/serving/<endpoint>/<name>/` → model → endpoint config → endpoint create-or-update (blue/green, deferred
wait) → verify it serves the new config → smoke test → autoscaling. Model and config share the name
`<endpoint>-<version>-<digest>`; existing ones are skipped, so retries and reruns never duplicate.
**Local**: vLLM (its CPU build) on 127.0.0.1; it starts in about a minute.

**Runbook**
- **smoke_test failed**: the endpoint answered something that is not a label (log shows the answer); `roll_back`
  restored the previous config/server (or removed what this run created). Check the model's evaluation.
- **deploy_endpoint failed**: SageMaker's FailureReason is in the log; a failed update leaves the old config serving.
- **verify_deployment failed**: the wait ended InService, but on the old config or with a FailureReason (a failed
  update; AWS: DescribeEndpoint `FailureReason`). The old version keeps serving; `serving/endpoint.json` and the
  registry still name it, and cleanup removes only the failed new config and model.
- **An endpoint stuck in `Failed`** (a failed first create) cannot be updated: run `teardown_endpoint`, then deploy.
- `delete_superseded` always runs last and removes this endpoint's unused configs and models.
- Turning it off: `teardown_endpoint` with the same endpoint name.
"""


@dag(
    dag_id="deploy_endpoint",
    description="Serves the promoted model on the endpoint, smoke-tests it and records it for classify_images.",
    schedule=[PROMOTED_MODEL],
    catchup=False,
    max_active_runs=1,  # two deploys of one endpoint would roll each other back
    tags=[*TAGS, "serving"],
    doc_md=DOC,
    default_args=default_args(),
    params={
        "endpoint_name": Param(DEFAULT_ENDPOINT_NAME, type="string", description="SageMaker endpoint name."),
        "model_version": Param(None, type=["null", "string"], description="None: the registry's production model."),
        "instance_type": Param(DEFAULT_INSTANCE_TYPE, type="string", description="SageMaker only."),
        "instance_count": Param(1, type="integer", minimum=1),
        "min_instances": Param(1, type="integer", minimum=1, description="Autoscaling lower bound."),
        "max_instances": Param(2, type="integer", minimum=1, description="Autoscaling upper bound."),
        "target_invocations_per_instance": Param(50, type="integer", minimum=1, description="Per minute."),
        "enable_prefix_caching": Param(False, type="boolean"),
        "images_per_prompt": Param(1, type="integer", minimum=1, description="vLLM limit_mm_per_prompt."),
        "extra_options": Param({}, type="object", description="More serving.properties option.* entries."),
        "max_image_tokens": Param(
            None,
            type=["integer", "null"],
            minimum=1,
            description="Image-token budget per image. Empty: the one the model was trained with (its dataset's). "
            "A value overrides it; the endpoint record and the log say so.",
        ),
        "smoke_image_uri": Param(None, type=["null", "string"], description="Probe image; none: a fixed digit."),
        "ready_timeout_s": Param(
            int(READY_DEADLINE_S), type="integer", minimum=10, description="Local server start limit (seconds)."
        ),
    },
)
def deploy_endpoint():
    @task(
        trigger_rule=TriggerRule.NONE_FAILED,  # deploy_endpoint is skipped when the endpoint was already right
        doc_md="""Classify one known image through the endpoint client; the answer must parse as a taxonomy
        label (whether it is the right one is logged). Fails with the raw answer otherwise.

**Runbook** — **failed**: the endpoint answers, but not with a label (raw answer in the log): `roll_back` restored
what served before. Check the model's evaluation (Costs & quality view) and the serving config; do not force it.""",
    )
    def smoke_test(plan: dict, url: str | None) -> str:
        return steps.smoke_test(SETTINGS, plan, url)

    @task(
        outlets=[SERVING_ENDPOINT],
        doc_md="Write `serving/endpoint.json` (what classify_images calls) and emit the serving_endpoint asset.",
    )
    def publish_endpoint(plan: dict, url: str | None, outlet_events=None) -> dict:
        record = steps.publish_endpoint(SETTINGS, plan, url)
        outlet_events[SERVING_ENDPOINT].extra = {
            key: record[key] for key in ("backend", "endpoint_name", "model_version", "url", "config_name")
        }
        return record

    plan = SERVING.plan()
    serving, url = SERVING.bring_up(plan)
    smoke = smoke_test(plan, url)
    published = publish_endpoint(plan, url)
    rolled_back = SERVING.roll_back()
    scaled = SERVING.scale(plan)
    chain(serving, smoke, published, scaled)
    [serving, smoke] >> rolled_back
    [published, rolled_back, scaled] >> SERVING.clean_up()  # after everything, whatever happened


deploy_endpoint()

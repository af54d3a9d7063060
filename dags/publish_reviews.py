"""Publish reviewers' labels for curation: the loop from the review queue back to training."""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from tasks.common.assets import REVIEWED_LABELS
from tasks.common.dag_defaults import SETTINGS, TAGS, default_args
from tasks.review.publish import DEFAULT_MIN_NEW_LABELS

DOC = f"""
### Publish reviews
Reviewers confirm or correct predictions on the **Review** page of Costs & quality (or in Label Studio:
`python -m tasks.cli review-export` / `review-import`); each decision lands under `review/decisions/`. Once a day
this DAG snapshots every image's newest reviewed label into `review/published/<time>-<digest>.json` and emits the
**reviewed_labels** asset, which triggers `curate_dataset` (it folds them into a new dataset version), then
`finetune_llava` (retraining, its gate and approval), as any new data would.

It publishes only when at least `min_new_labels` labels are new or changed since the last snapshot (default
{DEFAULT_MIN_NEW_LABELS}: a retraining costs a training job); otherwise the task is **skipped** with the count in its
log, and nothing downstream runs.

**Runbook**
- **Skipped**: not an error — too few new reviews. Trigger with a lower `min_new_labels` to retrain now.
- **Failed reading a decision**: a file under `review/decisions/` is not a decision record; the log names it.
- Rerunning is safe: the same labels are never published twice.
"""


@dag(
    dag_id="publish_reviews",
    description="Publishes reviewed labels as the reviewed_labels asset, which retrains through curation.",
    schedule="@daily",
    catchup=False,
    max_active_runs=1,  # one publisher at a time: two could otherwise both see the same labels as new
    tags=[*TAGS, "review"],
    doc_md=DOC,
    default_args=default_args(),
    params={
        "min_new_labels": Param(
            DEFAULT_MIN_NEW_LABELS,
            type="integer",
            minimum=1,
            description="Publish (and so retrain) only when at least this many reviewed labels are new or changed.",
        ),
    },
)
def publish_reviews():
    @task(
        outlets=[REVIEWED_LABELS],
        doc_md="""Snapshots the reviewed labels and emits **reviewed_labels**, or skips when too few are new.

**Runbook** — **skipped**: fewer than `min_new_labels` new reviews; the log says how many. Rerunning is safe.""",
    )
    def publish(params=None, outlet_events=None) -> dict:
        from tasks.review import steps

        snapshot = steps.publish(SETTINGS, params)
        outlet_events[REVIEWED_LABELS].extra = snapshot
        return snapshot

    publish()


publish_reviews()

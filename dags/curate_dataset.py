"""Curate labelled raw images into the fine-tuning dataset (pipeline 1 of 4)."""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from tasks.common import storage
from tasks.common.assets import CURATED_DATASET, REVIEWED_LABELS
from tasks.common.dag_defaults import SETTINGS, TAGS, default_args
from tasks.model.taxonomy import DEFAULT_PROMPT_TEMPLATE, available_taxonomies
from tasks.model.vision_tokens import DEFAULT_MAX_IMAGE_TOKENS

DOC = """
### Curate dataset
Turns a drop of labelled images into a HF `datasets` **DatasetDict** (`train`/`validation`/`test`) in TRL's
vision conversational format (`images` + `messages`; answer `this is a photo of {label}.`), plus
`curation_report.json` beside it, then emits the **curated_dataset** asset, which triggers `finetune_llava`.
Runs when reviewers' labels are published (the **reviewed_labels** asset, `publish_reviews`) or when triggered.

**Reviewed labels** (`fold_reviews`, on by default): the newest published review snapshot is folded in. A
reviewer's label wins over the drop's (a flagged mislabel is relabelled); reviewed production images are added
from `incoming/` (refused with a reason if their bytes changed since review). Each kept row's `label_source`
(`drop` or `review`) and the report's `reviews` say what came from where; the model trained on the dataset keeps
the snapshot in the registry.

**Input** (`raw_uri`): one folder per label, or a folder of images plus `labels.csv` (`path,label`).
Every file is fully decoded. Broken, tiny, non-image and decompression-bomb files, unknown labels, duplicates
and label conflicts are **rejected with a reason**; hidden/system files are **ignored**. Counts always add up.
Near-duplicates (resized, re-compressed, brightened copies: a 64-bit pHash within the taxonomy file's
`near_duplicates.max_distance`) are grouped and each group goes to one split; a group with two labels is a label
conflict. The report's `near_duplicates` lists the groups and the leakage check (`groups_across_splits` is 0).

**Runbook**
- **Task failed with `raw_uri ... does not exist`**: the drop is not where the param points. Fix the param, rerun.
- **Task failed with a `labels.csv` header error**: the CSV needs a `path,label` header.
- **Many rejections**: open `curation_report.json` (path in the log) — `rejection_reasons` counts them by kind.
- **A huge near-duplicate group or many `cut_by_size_cap` rows**: the taxonomy's threshold is too loose for its
  images; lower `near_duplicates.max_distance` in `include/taxonomies/<name>.yaml`.
- Rerunning is safe: the dataset directory is replaced as a whole; the report is written last and marks it complete.
"""


@dag(
    dag_id="curate_dataset",
    description="Validates and normalises a raw image drop into a split DatasetDict for fine-tuning.",
    schedule=[REVIEWED_LABELS],
    catchup=False,
    tags=[*TAGS, "curation"],
    doc_md=DOC,
    default_args=default_args(),
    params={
        "raw_uri": Param(
            f"{SETTINGS.storage_uri}/{storage.RAW}/{SETTINGS.taxonomy}",
            type="string",
            description="Labelled images: a folder per label, or images + labels.csv.",
        ),
        "taxonomy": Param(SETTINGS.taxonomy, enum=available_taxonomies()),
        "dataset_uri": Param(
            None,
            type=["null", "string"],
            description="Where to write the DatasetDict; none = <storage>/datasets/<taxonomy>-<run date>.",
        ),
        "test_fraction": Param(0.2, type="number", minimum=0, maximum=0.9),
        "val_fraction": Param(0.1, type="number", minimum=0, maximum=0.9),
        "seed": Param(42, type="integer"),
        "fold_reviews": Param(
            True,
            type="boolean",
            description="Fold in the newest published reviewed labels (a reviewer's label wins over the drop's).",
        ),
        "max_image_tokens": Param(
            DEFAULT_MAX_IMAGE_TOKENS,
            type=["integer", "null"],
            description="Vision-token budget per image; images are stored resized exactly as they will be served "
            "(null = no budget). See the README's token table.",
        ),
        "prompt_template": Param(
            DEFAULT_PROMPT_TEMPLATE,
            type="string",
            description="User prompt; {labels} is replaced by the taxonomy's labels.",
        ),
    },
)
def curate_dataset():
    @task(
        outlets=[CURATED_DATASET],
        doc_md="""Decode, validate, dedupe, split and save.

**Runbook** — **raw_uri … does not exist**: the drop is not where the param points; trigger again with the right
`raw_uri`. **labels.csv header**: the CSV needs `path,label`. **Many rejections** are not a failure: the counts by
reason are in `curation_report.json` (path in the log). Rerunning is safe.""",
    )
    def curate(params=None, ts_nodash=None, outlet_events=None, triggering_asset_events=None) -> dict:
        from tasks.curation import steps

        events = triggering_asset_events.get(REVIEWED_LABELS, []) if triggering_asset_events else []
        result = steps.curate(SETTINGS, params, ts_nodash, [event.extra for event in events])
        outlet_events[CURATED_DATASET].extra = result
        return result

    curate()


curate_dataset()

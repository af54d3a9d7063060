"""The review queue as Label Studio tasks, and Label Studio's annotations back as decisions.

Each task carries the model's answer as a prediction, `{model_version, score, result: [{from_name, to_name,
type: "choices", value: {choices: [label]}}]}` with `score` the calibrated confidence, so Label Studio sorts the
doubtful ones first. An exported task's `data` names its queued item (dt + content_sha256); import records the newest
non-cancelled annotation of each task through tasks.review.decisions.record, exactly as a reviewer on the Review page
would, and skips (with the reason) a task whose item is not queued or whose annotation holds no single choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from xml.sax.saxutils import quoteattr

from airflow.sdk import ObjectStoragePath

from tasks.common import storage
from tasks.model.taxonomy import Taxonomy
from tasks.review import decisions
from tasks.review.queue import QueueItem

FROM_NAME = "label"  # the Choices control of labeling_config
TO_NAME = "image"  # its Image object


def labeling_config(taxonomy: Taxonomy) -> str:
    """The Label Studio labeling config the exported tasks fit: one image, one choice among the taxonomy's labels."""
    choices = "".join(f"    <Choice value={quoteattr(label)}/>\n" for label in taxonomy.labels)
    return (
        f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">\n'
        f"{choices}  </Choices>\n</View>\n"
    )


def image_uri(item: QueueItem, storage_uri: str) -> str:
    """Where Label Studio (through its cloud storage) finds the image: the day's incoming file. A mislabel flag has
    only its path relative to the raw drop it was curated from (the curation report does not record the drop's URI),
    so a reviewer locates that one by path and hash."""
    if item.dt is None:
        return item.key
    return f"{storage_uri.rstrip('/')}/{storage.INCOMING}/{storage.partition_name(item.dt)}/{item.key}"


def export_tasks(items: Iterable[QueueItem], storage_uri: str) -> list[dict[str, Any]]:
    """One Label Studio task per queued item, with the model's answer as its prediction."""
    tasks = []
    for item in items:
        task: dict[str, Any] = {
            "data": {
                "image": image_uri(item, storage_uri),
                "dt": item.dt,
                "key": item.key,
                "content_sha256": item.content_sha256,
                "reason": item.reason,
                "runner_up": item.runner_up,
                "given_label": item.given_label,
            },
            "predictions": [],
        }
        if item.label is not None:
            result = {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [item.label]}}
            task["predictions"].append(
                {"model_version": item.model_version, "score": item.confidence, "result": [result]}
            )
        tasks.append(task)
    return tasks


def annotation(label: str, completed_by: str | int, at: datetime) -> dict[str, Any]:
    """One annotation as Label Studio exports it: the annotator's single choice, who, and when."""
    result = {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}
    when = at.isoformat(timespec="seconds")
    return {
        "result": [result],
        "completed_by": completed_by,
        "was_cancelled": False,
        "created_at": when,
        "updated_at": when,
    }


@dataclass
class Imported:
    """What an import did: decisions written, answers already recorded, and tasks skipped with why."""

    recorded: list[decisions.Decision] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)


def import_annotations(
    root: ObjectStoragePath,
    tasks: Any,
    items: Iterable[QueueItem],
    taxonomy: Taxonomy,
    now: datetime | None = None,
) -> Imported:
    """Record the newest non-cancelled annotation of each Label Studio task (its JSON export) as a decision."""
    if not isinstance(tasks, list):
        raise ValueError("expected Label Studio's JSON export: a list of tasks")
    queued = {item.ident: item for item in items}
    done = Imported()
    for n, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, Mapping) else None
        ident = (data.get("dt"), data.get("content_sha256")) if isinstance(data, Mapping) else None
        annotation = _newest_annotation(task)
        if annotation is None:
            continue  # not annotated yet
        item = queued.get(ident) if ident else None
        label = _single_choice(annotation)
        if item is None or label is None:
            done.skipped.append(f"task {n}: " + ("not a queued item" if item is None else "no single choice"))
            continue
        try:
            decision = decisions.record(
                root,
                item,
                label,
                reviewer=_reviewer(annotation),
                taxonomy=taxonomy,
                source="label_studio",
                now=_when(annotation) or now,
            )
        except ValueError as exc:
            done.skipped.append(f"task {n}: {exc}")
            continue
        if decision is None:
            done.unchanged += 1
        else:
            done.recorded.append(decision)
    return done


def _newest_annotation(task: Any) -> Mapping[str, Any] | None:
    annotations = task.get("annotations") if isinstance(task, Mapping) else None
    kept = [a for a in annotations or [] if isinstance(a, Mapping) and not a.get("was_cancelled")]
    return max(kept, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""), default=None)


def _single_choice(annotation: Mapping[str, Any]) -> str | None:
    for result in annotation.get("result") or []:
        if isinstance(result, Mapping) and result.get("from_name") == FROM_NAME and result.get("type") == "choices":
            choices = (result.get("value") or {}).get("choices")
            if isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], str):
                return choices[0]
    return None


def _when(annotation: Mapping[str, Any]) -> datetime | None:
    """When the annotator last saved the annotation (ISO 8601 in Label Studio's export), if it says."""
    try:
        return datetime.fromisoformat(str(annotation.get("updated_at") or annotation.get("created_at")))
    except ValueError:
        return None


def _reviewer(annotation: Mapping[str, Any]) -> str:
    """Label Studio's annotator: `completed_by` is a user id, or an object with the email in some exports."""
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("email") or who.get("id")
    return f"label-studio:{who if who not in (None, '') else 'unknown'}"

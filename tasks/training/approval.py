"""`approve_promotion`: a person approves or rejects a promotion in the Airflow UI before a new model serves traffic.

Airflow 3's human-in-the-loop operator (standard provider): with the run's `require_approval` param on, the task
waits in `awaiting_input` (Airflow 3.3: no triggerer involved) until someone answers in the UI's Required Actions,
with the gate's verdict, the metrics and the confusion matrix in front of them (tasks.training.steps.review_request).
Off — the local default — or when the gate refuses anyway, it passes straight through: same task ids either way.
The decision itself stays in tasks.training.steps.promote and the registry.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param, ParamsDict

APPROVE, REJECT = "Approve", "Reject"
RESPONSE_TIMEOUT = timedelta(days=3)  # unanswered: rejected (the default option), nothing is deployed


class PromotionApproval(HITLOperator):
    """Returns {"approved": True | False | None (nobody asked), "by": reviewer, "at": when (ISO), "comment": their
    comment, "reason": ...} for `promote`, which keeps it in the registry."""

    template_fields = (*HITLOperator.template_fields, "plan", "metrics")

    def __init__(self, *, plan: Any, metrics: Any, **kwargs: Any) -> None:
        # The Required Action form's one field: why — kept in the registry with the reviewer's name. Added to the
        # params Airflow merged in (the DAG's, marked source="dag", which HITLOperator leaves out of the form).
        params = kwargs.pop("params", None)
        params = params if isinstance(params, ParamsDict) else ParamsDict(params or {})
        params["comment"] = Param(
            None, type=["null", "string"], description="Why (kept in the registry).", source="task"
        )
        super().__init__(
            subject="Promote this model?",  # replaced by the review request at run time
            options=[APPROVE, REJECT],
            defaults=[REJECT],
            multiple=False,
            response_timeout=RESPONSE_TIMEOUT,
            params=params,
            **kwargs,
        )
        self.plan, self.metrics = plan, metrics

    def execute(self, context: Any) -> Any:
        from airflow.sdk.configuration import conf

        from tasks.common.settings import load_settings
        from tasks.training.steps import review_request

        params = context["params"]
        base_url = conf.get("api", "base_url", fallback="") or ""
        request = review_request(load_settings(), self.plan, self.metrics, params, base_url)
        if request is None:
            reason = "the gate refuses it" if params["require_approval"] else "require_approval is off"
            self.log.info("no review needed: %s", reason)
            return {"approved": None, "by": None, "at": None, "comment": None, "reason": reason}
        self.subject, self.body = request
        self.log.info("waiting for a reviewer: %s", self.subject)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        answer = super().execute_complete(context, event)
        user = answer.get("responded_by_user") or {}
        by = user.get("name") or user.get("id") if isinstance(user, dict) else str(user)
        chosen = answer["chosen_options"][0]
        at = answer.get("responded_at")
        at = at.isoformat(timespec="seconds") if hasattr(at, "isoformat") else str(at or "")
        comment = (answer.get("params_input") or {}).get("comment") or None
        self.log.info("%s by %s at %s%s", chosen, by, at, f": {comment}" if comment else "")
        return {"approved": chosen == APPROVE, "by": by, "at": at, "comment": comment, "reason": chosen}

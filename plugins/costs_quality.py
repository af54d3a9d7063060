"""The "Costs & quality" view — the model and partition dashboard: per-partition volume, $ per 1000 images, invalid
rate and quality-gate verdict, gaps, the production model and every version's metrics and promotion decision, a
chosen version's per-class metrics and confusion matrix, production accuracy from reviewed images, links to the DAG
runs; read live from the cost ledger, the committed partitions, the model registry and the review queue under
PIPELINE_STORAGE_URI (tasks.dashboard.view_data). Beside it, the Review page (/costs-quality/review): the review
queue's pending images, which a user with write access confirms or corrects, one POST per decision
(tasks.review.page, tasks.review.decisions).

A FastAPI app mounted by the API server at /costs-quality/, behind Airflow's own authentication (the UI's `_token`
cookie, or an `Authorization: Bearer` JWT from /auth/token); anonymous requests get 401. The UI shows it in its
navigation as an external view (an iframe at /plugin/costs-quality). A decision POST also needs write access to
assets (reviewed labels are published as one) and must prove it came from the page: JSON, the page's CSRF token,
same origin (tasks.review.page.csrf_refusal).

Every Airflow process loads plugins, each task's process included, so this module imports nothing heavy: the app is
built on its first request, and the report (DuckDB), chart (matplotlib) and template (Jinja2) load only then.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' parameter annotations (the user dependency, the
# decision body), which name objects imported inside build_app; as strings they would not resolve from the module.
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from tasks.dashboard.view_data import PartitionRow

URL_PREFIX = "/costs-quality"
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

# The pages' own inline styles (and the SVG's), images and same-origin scripts (static/: run links open in the
# surrounding Airflow UI; the Review page's keys and decision POSTs, fetch() to this origin only) — never an inline
# script; shown only in an iframe of the Airflow UI, which has the same origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
    "style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'self'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class BuiltOnFirstRequest:
    """An ASGI app that builds the real one when the first request arrives (one event loop: built once), and puts
    SECURITY_HEADERS on every response it sends — errors included: FastAPI's 500 comes from Starlette's outermost
    error middleware, past any middleware of the app's own, and a failed build has no app at all."""

    def __init__(self, build: Callable[[], ASGIApp]) -> None:
        self._build = build
        self._app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._built()(scope, receive, send)
            return
        started = False

        async def send_secured(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                kept = [(k, v) for k, v in message.get("headers", []) if k.decode("latin-1").lower() not in _SECURED]
                message = {**message, "headers": kept + _ENCODED_HEADERS}
            await send(message)

        try:
            await self._built()(scope, receive, send_secured)
        except Exception:
            if started:  # the app already answered (its own 500): let the server log the error
                raise
            logging.getLogger(__name__).exception("costs & quality: unhandled error")
            await send_secured(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send_secured({"type": "http.response.body", "body": b"Internal error: see the API server's log."})

    def _built(self) -> ASGIApp:
        if self._app is None:
            self._app = self._build()
        return self._app


_SECURED = {name.lower() for name in SECURITY_HEADERS}
_ENCODED_HEADERS = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]
SCRIPTS = ("costs_quality.js", "review.js")  # all static/ serves


def build_app() -> ASGIApp:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, AssetDetails
    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_asset, requires_access_view
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, ConfigDict

    from tasks.common import storage
    from tasks.common.settings import load_settings
    from tasks.review import page

    # Airflow's own security dependency: the user comes from the Bearer JWT or the UI's `_token` cookie, validated by
    # the configured auth manager (401 without a token, 403 for an invalid one), and must be allowed to see the
    # website (AccessView.WEBSITE, else 403). Nothing here parses a JWT itself.
    app = FastAPI(
        title="Costs & quality",
        dependencies=[Depends(requires_access_view(AccessView.WEBSITE))],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    def storage_root() -> "ObjectStoragePath":
        return storage.root(load_settings())

    def respond(body: str | bytes, media_type: str) -> Response:  # every page and file (decisions answer JSON)
        return Response(body, media_type=media_type)

    def html(body: str) -> Response:
        return respond(body, "text/html; charset=utf-8")

    @app.get("/")
    def costs_quality_page(version: str | None = None) -> Response:  # sync: DuckDB and matplotlib block (a thread)
        return html(render_page(storage_root(), version))

    @app.get("/static/{name}")
    def script(name: str) -> Response:
        if name not in SCRIPTS:
            raise HTTPException(status_code=404, detail="no such script")
        return respond((STATIC / name).read_bytes(), "text/javascript")

    @app.get("/models/{version}/{plot}")
    def model_plot(version: str, plot: str) -> Response:
        """A registered version's confusion matrix or risk-coverage curve (view_data.MODEL_PLOTS), nothing else."""
        from tasks.dashboard.view_data import model_plot_png

        png = model_plot_png(storage_root() / storage.MODELS, version, plot)
        if png is None:
            raise HTTPException(status_code=404, detail=f"no {plot} for that version")
        return respond(png, "image/png")

    def may_decide(user: BaseUser) -> bool:
        """What requires_access_asset("POST") checks for the decision route, asked ahead to show a read-only page."""
        return get_auth_manager().is_authorized_asset(method="POST", details=AssetDetails(), user=user)

    @app.get("/review")
    def review_page(user: GetUserDep, show: str = "pending") -> Response:
        csrf = csrf_token(user.get_id()) if may_decide(user) else ""
        return html(render_review_page(storage_root(), csrf, include_reviewed=show == "all"))

    @app.get("/review/images/{dt}/{content_sha256}")
    def review_image(dt: str, content_sha256: str) -> Response:
        """A queued item's incoming image, looked up in the queue and checked (tasks.review.page.image_bytes)."""
        settings = load_settings()
        item = page.find_item(storage.root(settings), dt, content_sha256)
        image = page.image_bytes(settings, item) if item else None
        if image is None:
            raise HTTPException(status_code=404, detail="no image for that queued item")
        return respond(*image)

    def from_the_page(request: Request, user: GetUserDep) -> None:
        """403 with the reason unless the request proves it came from the Review page (CSRF)."""
        refusal = page.csrf_refusal(
            request.headers,
            secret=csrf_secret(),
            user_id=user.get_id(),
            host=request.headers.get("host", ""),
            allowed_origins=configured_origins(),
        )
        if refusal:
            raise HTTPException(status_code=403, detail=refusal)

    class DecisionBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        dt: str | None  # null: a mislabel flag
        content_sha256: str
        label: str

    # Deciding writes a reviewed label, published as an Asset: Airflow's asset write permission (with the
    # SimpleAuthManager role Op or Admin; a Viewer or User gets 403), airflow/api_fastapi/core_api/security.py
    # requires_access_asset in apache-airflow 3.3.2. The CSRF check runs after it and before the body is read.
    @app.post("/review/decisions", dependencies=[Depends(requires_access_asset("POST")), Depends(from_the_page)])
    def decide(body: DecisionBody, user: GetUserDep) -> JSONResponse:
        from tasks.model.taxonomy import load_taxonomy
        from tasks.review import decisions

        settings = load_settings()
        root = storage.root(settings)
        item = page.find_item(root, body.dt, body.content_sha256)
        if item is None:
            raise HTTPException(status_code=404, detail="no such queued item (dt, content_sha256)")
        try:
            decision = decisions.record(
                root, item, body.label, reviewer=user.get_name(), taxonomy=load_taxonomy(settings.taxonomy)
            )
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        if decision is None:
            return JSONResponse({"status": "unchanged"})
        return JSONResponse({"status": "recorded", "decision": decision.to_dict()})

    return app


def csrf_secret() -> str:
    """The key of the Review page's CSRF tokens: the API server's `[api] secret_key` (get_signing_key generates and
    keeps one for the process when it is unset, as Airflow does for itself: airflow/api_fastapi/auth/tokens.py)."""
    from airflow.api_fastapi.auth.tokens import get_signing_key

    return get_signing_key("api", "secret_key")


def csrf_token(user_id: str) -> str:
    """The user's CSRF token for a freshly rendered Review page (tasks.review.page.csrf_token)."""
    from tasks.review.page import csrf_token as token

    return token(csrf_secret(), user_id)


def configured_origins() -> tuple[str, ...]:
    """The origin of `[api] base_url`, when set: the UI's address behind a proxy that rewrites Host."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    url = urlsplit(conf.get("api", "base_url", fallback="") or "")
    return (f"{url.scheme}://{url.netloc}",) if url.scheme and url.netloc else ()


def render(template: str, **context: Any) -> str:
    """One of templates/, autoescaped (every string from storage is text), with the dashboard's number formats."""
    import jinja2

    from tasks.dashboard import view_data

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters.update(usd=view_data.usd, percent=view_data.percent, thousands=view_data.thousands)
    return env.get_template(template).render(**context)


def render_page(storage_root: "ObjectStoragePath", version: str | None = None) -> str:
    from tasks.dashboard import view_data

    report = view_data.build_report(storage_root, version)
    return render(
        "costs_quality.html", report=report, chart_svg=chart_svg(report.partitions), storage_uri=str(storage_root)
    )


def render_review_page(storage_root: "ObjectStoragePath", csrf: str, *, include_reviewed: bool = False) -> str:
    """The Review page: the queue's items in review order (tasks.review.page.review_items), the taxonomy's labels
    to correct with, and the user's CSRF token for the page's script (CSP forbids inline script: a data
    attribute); no token: the user may not decide, the page is read-only."""
    from tasks.common.settings import load_settings
    from tasks.model.taxonomy import load_taxonomy
    from tasks.review import decisions, page, queue

    items = list(queue.read_queue(storage_root))
    reviewed = decisions.reviewed_labels(storage_root)
    return render(
        "review.html",
        items=page.review_items(items, reviewed, include_reviewed=include_reviewed),
        pending=page.pending_count(items, reviewed),
        labels=load_taxonomy(load_settings().taxonomy).labels,
        csrf_token=csrf,
        include_reviewed=include_reviewed,
        storage_uri=str(storage_root),
    )


def chart_svg(partitions: "list[PartitionRow]") -> str:
    """Bars: $ per 1000 images; line: invalid rate; one point per partition, oldest first. Inline SVG, so the page
    is one response and its text stays text."""
    if not partitions:
        return ""
    import io

    import matplotlib
    from matplotlib.figure import Figure

    rows = partitions[::-1]
    positions = range(len(rows))
    # parse_math off: a label with `$` (any text from storage) is drawn as written, never parsed as mathtext
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9, "text.parse_math": False}):
        fig = Figure(figsize=(9, 3))
        cost_axis = fig.subplots()
        cost_axis.bar(positions, [p.usd_per_1000_images or 0.0 for p in rows], color="#4c78a8")
        cost_axis.set_ylabel("$ per 1000 images", color="#4c78a8")
        cost_axis.set_xticks(positions, [p.dt for p in rows], rotation=30 if len(rows) > 6 else 0)
        rate_axis = cost_axis.twinx()
        rate_axis.plot(positions, [100 * (p.invalid_rate or 0.0) for p in rows], color="#e45756", marker="o")
        rate_axis.set_ylabel("invalid %", color="#e45756")
        rate_axis.set_ylim(0, 105)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog and doctype: it is embedded in HTML


class CostsQualityPlugin(AirflowPlugin):
    name = "costs_quality"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": BuiltOnFirstRequest(build_app), "url_prefix": URL_PREFIX, "name": "Costs & quality"}
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Costs & quality",
            "href": URL_PREFIX.lstrip("/") + "/",  # relative, so it also works behind a base-URL prefix
            "url_route": "costs-quality",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]

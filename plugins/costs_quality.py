"""The "Costs & quality" view — the model and partition dashboard: per-partition volume, $ per 1000 images, invalid
rate and quality-gate verdict, gaps, the production model and every version's metrics and promotion decision, a
chosen version's per-class metrics and confusion matrix, links to the DAG runs; read live from the cost ledger, the
committed partitions and the model registry under PIPELINE_STORAGE_URI (tasks.dashboard.view_data).

A FastAPI app mounted by the API server at /costs-quality/, behind Airflow's own authentication (the UI's `_token`
cookie, or an `Authorization: Bearer` JWT from /auth/token); anonymous requests get 401. The UI shows it in its
navigation as an external view (an iframe at /plugin/costs-quality).

Every Airflow process loads plugins, each task's process included, so this module imports nothing heavy: the app is
built on its first request, and the report (DuckDB), chart (matplotlib) and template (Jinja2) load only then.
"""

from __future__ import annotations

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

# The page's own inline styles (and the SVG's), images and one same-origin script (static/costs_quality.js: run links
# open in the surrounding Airflow UI) — never an inline script; shown only in an iframe of the Airflow UI, which has
# the same origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'self'; base-uri 'none'; form-action 'none'",
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


def build_app() -> ASGIApp:
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import Response

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

    def storage_root() -> ObjectStoragePath:
        from tasks.common.settings import load_settings
        from tasks.common.storage import root

        return root(load_settings())

    def respond(body: str | bytes, media_type: str) -> Response:  # every route answers through here
        return Response(body, media_type=media_type)

    @app.get("/")
    def costs_quality_page(version: str | None = None) -> Response:  # sync: DuckDB and matplotlib block (a thread)
        return respond(render_page(storage_root(), version), "text/html; charset=utf-8")

    @app.get("/static/costs_quality.js")
    def links_script() -> Response:
        return respond((STATIC / "costs_quality.js").read_bytes(), "text/javascript")

    @app.get("/models/{version}/{plot}")
    def model_plot(version: str, plot: str) -> Response:
        """A registered version's confusion matrix or risk-coverage curve (view_data.MODEL_PLOTS), nothing else."""
        from tasks.common import storage
        from tasks.dashboard.view_data import model_plot_png

        png = model_plot_png(storage_root() / storage.MODELS, version, plot)
        if png is None:
            raise HTTPException(status_code=404, detail=f"no {plot} for that version")
        return respond(png, "image/png")

    return app


def render_page(storage_root: ObjectStoragePath, version: str | None = None) -> str:
    import jinja2

    from tasks.dashboard import view_data

    report = view_data.build_report(storage_root, version)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters.update(usd=view_data.usd, percent=view_data.percent, thousands=view_data.thousands)
    return env.get_template("costs_quality.html").render(
        report=report, chart_svg=chart_svg(report.partitions), storage_uri=str(storage_root)
    )


def chart_svg(partitions: list[PartitionRow]) -> str:
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

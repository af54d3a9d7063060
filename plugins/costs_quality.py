"""The "Costs & quality" view: per-partition volume, $ per 1000 images, invalid rate, the production model's accuracy
and a chart, read live from the cost ledger and the model registry under PIPELINE_STORAGE_URI.

A FastAPI app mounted by the API server at /costs-quality/, behind Airflow's own authentication (the UI's `_token`
cookie, or an `Authorization: Bearer` JWT from /auth/token); anonymous requests get 401. The UI shows it in its
navigation as an external view (an iframe at /plugin/costs-quality).

Every Airflow process loads plugins, each task's process included, so this module imports nothing heavy: the app is
built on its first request, and the report (DuckDB), chart (matplotlib) and template (Jinja2) load only then.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from tasks.costs.view_data import PartitionRow

URL_PREFIX = "/costs-quality"
TEMPLATES = Path(__file__).parent / "templates"

# The page is one self-contained response: no scripts at all, its own inline styles (and the SVG's), shown only in an
# iframe of the Airflow UI, which has the same origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class BuiltOnFirstRequest:
    """An ASGI app that builds the real one when the first request arrives (one event loop: built once)."""

    def __init__(self, build: Callable[[], ASGIApp]) -> None:
        self._build = build
        self._app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self._app is None:
            self._app = self._build()
        await self._app(scope, receive, send)


def build_app() -> ASGIApp:
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view
    from fastapi import Depends, FastAPI
    from fastapi.responses import HTMLResponse

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

    @app.middleware("http")
    async def security_headers(request, call_next):  # on every response, the 401/403 ones included
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", response_class=HTMLResponse)
    def costs_quality_page() -> HTMLResponse:  # sync: DuckDB and matplotlib block, FastAPI runs it in a thread
        from tasks.common.settings import load_settings
        from tasks.common.storage import root

        return HTMLResponse(render_page(root(load_settings())))

    return app


def render_page(storage_root: ObjectStoragePath) -> str:
    import jinja2

    from tasks.costs import view_data

    report = view_data.build_report(storage_root)
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

"""The daily cost report: one table (CSV + Markdown) and one PNG chart per day, from the cost ledger.

Each day's spend is split by kind — classification (endpoint busy time), endpoint idle time, training — with images
classified and dollars per 1000 images, both for the busy time alone and all-in (busy + idle). The report for day D
covers the `window_days` days up to D, so a chart shows the trend and not a single bar.
"""

from __future__ import annotations

import csv
import io
from dataclasses import astuple, dataclass, fields
from datetime import date, timedelta

from airflow.sdk import ObjectStoragePath

from tasks.common import plots, storage
from tasks.costs import ledger
from tasks.costs.pricing import usd_per_1000_images

REPORTS_DIR = "reports"
WINDOW_DAYS = 30

# Ledger columns are strings in an empty ledger (tasks.costs.read_ledger): cast before summing.
_DAILY_SQL = """
SELECT day,
       SUM(CASE WHEN kind = 'classification' THEN usd ELSE 0 END) AS classification_usd,
       SUM(CASE WHEN kind = 'endpoint_idle' THEN usd ELSE 0 END) AS idle_usd,
       SUM(CASE WHEN kind = 'training' THEN usd ELSE 0 END) AS training_usd,
       SUM(CASE WHEN kind = 'classification' THEN images ELSE 0 END) AS images
FROM (SELECT kind, COALESCE(NULLIF(day, ''), substr(recorded_at, 1, 10)) AS day,
             CAST(cost_usd AS DOUBLE) AS usd, CAST(images AS BIGINT) AS images FROM ledger)
WHERE day BETWEEN $first AND $last
GROUP BY day ORDER BY day
"""


@dataclass(frozen=True)
class DailyCost:
    day: str
    classification_usd: float
    idle_usd: float
    training_usd: float
    images: int

    @property
    def total_usd(self) -> float:
        return self.classification_usd + self.idle_usd + self.training_usd

    @property
    def usd_per_1000_images(self) -> float | None:
        return usd_per_1000_images(self.classification_usd, self.images)

    @property
    def all_in_usd_per_1000_images(self) -> float | None:
        return usd_per_1000_images(self.classification_usd + self.idle_usd, self.images)


COLUMNS = [f.name for f in fields(DailyCost)] + ["total_usd", "usd_per_1000_images", "all_in_usd_per_1000_images"]


def daily_costs(costs_root: ObjectStoragePath, last_day: str, window_days: int = WINDOW_DAYS) -> list[DailyCost]:
    first = (date.fromisoformat(last_day) - timedelta(days=window_days - 1)).isoformat()
    rows = ledger.query(costs_root, _DAILY_SQL, {"first": first, "last": last_day})
    return [DailyCost(**row) for row in rows]


def _values(row: DailyCost) -> list:
    return [*astuple(row), row.total_usd, row.usd_per_1000_images, row.all_in_usd_per_1000_images]


def to_csv(rows: list[DailyCost]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    writer.writerows(_values(row) for row in rows)
    return buf.getvalue()


def to_markdown(rows: list[DailyCost]) -> str:
    def cell(value: object) -> str:
        if value is None:
            return "—"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(v) for v in _values(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def chart_png(rows: list[DailyCost], title: str) -> bytes:
    """Stacked daily spend by kind, with $/1000 images (all-in) on a second axis."""
    x = list(range(len(rows)))  # positions, labelled with the days (dates as strings would be guessed at)
    with plots.figure(figsize=(10, 4.5), dpi=100) as (fig, ax):
        bottom = [0.0] * len(rows)
        for name, color in (("classification_usd", "#4c72b0"), ("idle_usd", "#c4c4c4"), ("training_usd", "#dd8452")):
            values = [getattr(row, name) for row in rows]
            ax.bar(x, values, bottom=bottom, label=name.removesuffix("_usd"), color=color)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylabel("USD per day")
        ax.set_title(title)
        ax.set_xticks(x, [row.day for row in rows], rotation=60)
        per_1000 = [row.all_in_usd_per_1000_images for row in rows]
        right = ax.twinx()
        right.plot(x, [float("nan") if v is None else v for v in per_1000], "k.-", label="$/1000 images, all-in")
        right.set_ylabel("USD per 1000 images")
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="upper left", fontsize="small")
        return plots.png(fig)


def write_report(costs_root: ObjectStoragePath, day: str, window_days: int = WINDOW_DAYS) -> dict[str, str]:
    """Write `costs/reports/day=<day>/costs.{csv,md,png}`; returns their URIs and the day's totals."""
    rows = daily_costs(costs_root, day, window_days)
    out = costs_root / REPORTS_DIR / f"day={day}"
    paths = {"csv": out / "costs.csv", "markdown": out / "costs.md", "png": out / "costs.png"}
    storage.write_bytes_atomic(paths["csv"], to_csv(rows).encode())
    storage.write_bytes_atomic(paths["markdown"], to_markdown(rows).encode())
    storage.write_bytes_atomic(paths["png"], chart_png(rows, f"Daily cost, {window_days} days to {day}"))
    return {name: str(path) for name, path in paths.items()}

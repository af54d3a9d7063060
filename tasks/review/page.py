"""What the Review page (plugins/costs_quality.py, GET /costs-quality/review) needs, as plain functions: the queued
items in review order, one item looked up by its identity, its image read safely from `incoming/`, and the CSRF
check of a decision POST.

The server never trusts the page's copy of an item: a decision names the item by (dt, content_sha256) and the
item (the model's label, its key) is read back from the queue here. Every file path built from a queue row is
checked: a key is a plain relative path, the whole path stays in the storage root without a symlink
(tasks.common.storage.contained), the file is read without following a final symlink and its bytes must hash to
the queued content_sha256.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from airflow.sdk import ObjectStoragePath

from tasks.common import storage
from tasks.common.settings import Settings
from tasks.review import queue
from tasks.review.decisions import Decision
from tasks.review.queue import QueueItem

CSRF_HEADER = "X-CSRF-Token"
_CSRF_CONTEXT = b"costs-quality review decision\0"  # this key use only: the same secret signs nothing else like it
# How long a Review page's token is good for: a working day with the page left open. Past it, a decision is refused
# with "reload the Review page", so a token that leaked (a proxy log, a screenshot) stops working on its own.
CSRF_TOKEN_TTL_S = 12 * 3600
CSRF_CLOCK_SKEW_S = 300  # API servers behind one load balancer may disagree this much about the time
MAX_IMAGE_BYTES = 32 * 2**20  # tasks.model.images.MAX_FILE_BYTES: no image the pipeline classified is larger
# What the page shows in an <img>; anything else is not served (nosniff: the type must be right).
IMAGE_TYPES = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
    b"BM": "image/bmp",
}


@dataclass(frozen=True)
class ReviewItem:
    """A queued item as the page lists it: with its newest decision, if any."""

    item: QueueItem
    decision: Decision | None

    @property
    def image_link(self) -> str:
        """The image route, relative to the page; "" for a mislabel flag (no incoming file to serve)."""
        if self.item.dt is None:
            return ""
        return f"review/images/{quote(self.item.dt, safe='')}/{quote(self.item.content_sha256, safe='')}"

    @property
    def second_choice(self) -> str | None:
        """The label one key takes besides the model's: its runner-up; for a mislabel flag, the dataset's label."""
        return self.item.given_label if self.item.reason == "mislabel_flag" else self.item.runner_up


def review_items(
    items: Iterable[QueueItem], reviewed: Mapping[str, Decision], *, include_reviewed: bool = False
) -> list[ReviewItem]:
    """Pending items (no decision yet), the least confident first, those without a confidence last; with
    `include_reviewed`, the reviewed ones follow in the same order."""
    rows = [ReviewItem(item, reviewed.get(item.content_sha256)) for item in items]
    kept = [row for row in rows if include_reviewed or row.decision is None]
    return sorted(
        kept,
        key=lambda r: (r.decision is not None, r.item.confidence is None, r.item.confidence or 0.0, r.item.ident),
    )


def pending_count(items: Iterable[QueueItem], reviewed: Mapping[str, Decision]) -> int:
    return sum(item.content_sha256 not in reviewed for item in items)


def find_item(root: ObjectStoragePath, dt: str | None, content_sha256: str) -> QueueItem | None:
    """The queued item (dt, content_sha256): read from that day's queue file only; a mislabel flag (dt None) from
    the flag files. None when it is not queued, or `dt` could not name a queue file."""
    if dt is None:
        folder = queue.queue_dir(root)
        names = [e.key for e in storage.iter_files(folder) if e.key.startswith("model=") and e.key.endswith(".jsonl")]
        candidates: Iterable[QueueItem] = (item for name in sorted(names) for item in queue.read_file(folder / name))
    else:
        try:
            candidates = queue.read_file(queue.day_file(root, dt))
        except ValueError:  # not a name a queue file can have: nothing is queued under it
            return None
    return next((item for item in candidates if item.ident == (dt, content_sha256)), None)


def image_bytes(settings: Settings, item: QueueItem) -> tuple[bytes, str] | None:
    """(bytes, media type) of the item's incoming file, `incoming/dt=D/<key>`; None when it has none (a mislabel
    flag), its key is not a plain relative path, the path leaves the storage root or goes through a symlink, the
    file is missing, not a regular file, too large, not an image type the page shows, or its bytes do not hash to
    the queued content_sha256."""
    if item.dt is None or not is_plain_key(item.key):
        return None
    try:
        day = storage.partition_name(queue.safe_name(item.dt))
        uri = f"{settings.storage_uri}/{storage.INCOMING}/{day}/{item.key}"
        data = storage.read_bytes_capped(storage.contained(uri, settings, param="key", inputs=False), MAX_IMAGE_BYTES)
    except (storage.ContainmentError, OSError, ValueError):  # Refused is a ValueError; missing: FileNotFoundError
        return None
    media_type = next((kind for magic, kind in IMAGE_TYPES.items() if data.startswith(magic)), None)
    if media_type is None or hashlib.sha256(data).hexdigest() != item.content_sha256:
        return None
    return data, media_type


def is_plain_key(key: str) -> bool:
    """A relative path of named segments: no leading `/`, no `.`, `..` or empty segment, no backslash or NUL."""
    return bool(key) and "\\" not in key and "\0" not in key and all(p not in ("", ".", "..") for p in key.split("/"))


def csrf_token(secret: str, user_id: str, *, now: float | None = None) -> str:
    """The token a decision POST must carry: `<issued>.<HMAC of the user's id and issued time>`, keyed by the
    server's secret. A page from this origin can read it (it is rendered into the page); a cross-site page cannot."""
    issued = str(int(time.time() if now is None else now))
    return f"{issued}.{_csrf_mac(secret, user_id, issued)}"


def _csrf_mac(secret: str, user_id: str, issued: str) -> str:
    message = _CSRF_CONTEXT + user_id.encode() + b"\0" + issued.encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def csrf_token_refusal(token: str, *, secret: str, user_id: str, now: float | None = None) -> str | None:
    """Why `token` is not this user's live token from this server (one line), or None when it is."""
    issued, _, mac = token.partition(".")
    if not (issued.isascii() and issued.isdigit()) or not hmac.compare_digest(
        mac.encode(), _csrf_mac(secret, user_id, issued).encode()
    ):
        return f"missing or wrong {CSRF_HEADER} header: reload the Review page"
    age = (time.time() if now is None else now) - int(issued)
    if not -CSRF_CLOCK_SKEW_S <= age <= CSRF_TOKEN_TTL_S:
        return (
            f"the Review page's {CSRF_HEADER} is older than {CSRF_TOKEN_TTL_S // 3600} h (or from a clock ahead of "
            "this server's): reload the Review page"
        )
    return None


def csrf_refusal(
    headers: Mapping[str, str],
    *,
    secret: str,
    user_id: str,
    host: str,
    allowed_origins: Iterable[str] = (),
    now: float | None = None,
) -> str | None:
    """Why a state-changing request does not prove it came from the page (one line), or None when it does.

    The UI's cookie rides along on any request to this origin, so each of these is required: the browser's own
    Sec-Fetch-Site (when sent) says same-origin; an Origin (when sent) is this host or one of `allowed_origins`
    (the configured base URL); the body is JSON (a cross-site form cannot send that without a CORS preflight,
    which this app never grants); and the CSRF header is the user's unexpired token (csrf_token_refusal).
    `headers` must be case-insensitive (Starlette's are)."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site != "same-origin":
        return f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != host and origin.rstrip("/") not in set(allowed_origins):
        return "cross-origin request refused (Origin does not match this server)"
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return "a decision must be sent as application/json"
    return csrf_token_refusal(headers.get(CSRF_HEADER.lower(), ""), secret=secret, user_id=user_id, now=now)

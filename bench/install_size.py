"""How much an install downloads: the wheels in a `pip install --dry-run --report` file, sized by HTTP HEAD (or on
disk for file:// links). `bin/mwaa-check requirements.txt REPORT`, then `python -m bench.install_size REPORT`."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx


def size(url: str) -> int:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)).stat().st_size
    return int(httpx.head(url, follow_redirects=True, timeout=30).headers["content-length"])


def main(report_path: str) -> None:
    installs = json.loads(Path(report_path).read_text())["install"]
    urls = {item["metadata"]["name"]: item["download_info"]["url"] for item in installs}
    with ThreadPoolExecutor(8) as pool:
        sizes = dict(zip(urls, pool.map(size, urls.values()), strict=True))
    biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
    print(
        f"{len(sizes)} packages, {sum(sizes.values()) / 1e6:.0f} MB to download; largest: "
        + ", ".join(f"{name} {bytes_ / 1e6:.0f} MB" for name, bytes_ in biggest)
    )


if __name__ == "__main__":
    main(sys.argv[1])

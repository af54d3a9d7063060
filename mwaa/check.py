"""Resolve a requirements file the way Amazon MWAA's Airflow 3.3.1 image would install it, without installing.

MWAA runs `pip3 install --constraint mwaa_essential_constraints.txt -r requirements.txt [-c airflow_constraints.txt]`
on top of its own packages at every environment start (images/airflow/3.3.1/python/mwaa/utils/user_requirements.py
and bin/airflow-user/safe-pip-install in aws/amazon-mwaa-docker-images; see mwaa/README.md). This check asks pip
for the same resolution with `pip install --dry-run --report` for CPython 3.12 on manylinux x86_64, binary wheels only,
against MWAA's published constraints with this project's overrides applied, exactly the file bin/mwaa-package ships
(mwaa/constraints-3.3.1.txt + mwaa/overrides-3.3.1.txt; --strict: the published file alone), MWAA's essential
constraints and MWAA's own packages (mwaa/base-requirements.txt).

It prints the resolved set and how much it downloads, and exits 1 on a conflict: pip finds no resolution, or a
package requirements.txt names resolves to an older major version than the one the project tests with
(constraints.txt): pip "resolves" an unsatisfiable range by backtracking to an ancient release, which breaks at run
time instead of at install time. Exits 0 with "skipped: PyPI not reachable" when it cannot reach the index.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import package  # mwaa/package.py: the constraints file the upload names

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
INDEX_URL = os.environ.get("MWAA_CHECK_INDEX_URL", "https://pypi.org/simple")
PYTHON_VERSION = "3.12"  # MWAA's Airflow 3.3.1 image: Python 3.12.13 (Dockerfile.base, PYTHON_VERSION)
# Fargate's glibc is recent; every manylinux tag up to 2_28 (what the wheels we resolve ship) is installable there.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")
# The regex MWAA uses to decide whether requirements.txt brings its own constraints (it then does not force
# airflow_constraints.txt): it matches commented-out lines too, on purpose.
MWAA_CONSTRAINT_RE = re.compile(r"-c |--constraint ")
# Training and serving run in their containers; the Airflow environment never installs these (issue 20).
HEAVY = {"torch", "transformers", "trl", "accelerate", "deepspeed"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line (constraints files)."""
    found = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            found[canonical(m[1])] = m[2]
    return found


def requirement_names(path: Path) -> list[str]:
    """The project names a requirements file asks for (options, includes and comments skipped)."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if m:
            names.append(canonical(m[0]))
    return names


def reachable(url: str, timeout: float = 10.0) -> str | None:
    """None when the index answers, else why not."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/pip/", timeout=timeout) as response:
            response.read(1)
        return None
    except (urllib.error.URLError, OSError, ValueError) as error:
        return str(getattr(error, "reason", error))


def pip_env() -> dict[str, str]:
    """pip with none of this machine's settings (local indexes, find-links, constraints): PyPI as MWAA sees it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def dry_run(python: str, args: list[str], report: Path) -> subprocess.CompletedProcess:
    command = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--report", str(report)]
    command += ["--index-url", INDEX_URL, "--only-binary=:all:", "--python-version", PYTHON_VERSION]
    command += ["--implementation", "cp", "--abi", f"cp{PYTHON_VERSION.replace('.', '')}"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    return subprocess.run(command + args, env=pip_env(), capture_output=True, text=True, check=False)


def sizes(urls: list[str]) -> dict[str, int]:
    """Content-Length of each wheel (pip's report names the files, not their size)."""

    def head(url: str) -> tuple[str, int]:
        for attempt in range(3):
            try:
                request = urllib.request.Request(url, method="HEAD")
                with urllib.request.urlopen(request, timeout=30) as response:
                    return url, int(response.headers.get("Content-Length", 0))
            except (urllib.error.URLError, OSError):
                time.sleep(1 + attempt)
        return url, 0

    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(pool.map(head, urls))


def resolved(report: Path) -> dict[str, dict]:
    """canonical name -> {name, version, url} from a pip installation report."""
    entries = {}
    for item in json.loads(report.read_text())["install"]:
        meta = item["metadata"]
        entries[canonical(meta["name"])] = {
            "name": meta["name"],
            "version": meta["version"],
            "url": item["download_info"]["url"],
        }
    return entries


def major(version: str) -> int:
    m = re.match(r"\d+", version)
    return int(m[0]) if m else 0


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bin/mwaa-check", description=__doc__.split("\n\n")[0])
    p.add_argument("requirements", nargs="?", default="requirements.txt", help="default: ./requirements.txt")
    p.add_argument("--constraints", default=str(HERE / "constraints-3.3.1.txt"), help="MWAA's published constraints")
    p.add_argument("--essential", default=str(HERE / "essential-constraints-3.3.1.txt"))
    p.add_argument("--no-base", action="store_true", help="leave MWAA's own packages out (faster)")
    p.add_argument("--base", default=str(HERE / "base-requirements.txt"), help="what MWAA's image installs itself")
    p.add_argument("--tested", default="constraints.txt", help="the versions the project tests with")
    p.add_argument("--strict", action="store_true", help="MWAA's published constraints only, no overrides")
    p.add_argument("--plain", action="store_true", help="no MWAA constraints or packages: only the download size")
    p.add_argument("--report", help="also write pip's installation report here")
    args = p.parse_args(argv)

    requirements = Path(args.requirements).resolve()
    if not requirements.is_file():
        print(f"mwaa-check: no such requirements file: {requirements}", file=sys.stderr)
        return 2
    why = reachable(INDEX_URL)
    if why is not None:
        print(f"mwaa-check: skipped: PyPI not reachable ({INDEX_URL}: {why})")
        return 0

    overrides = None if args.strict or args.plain else package.OVERRIDES
    base = Path(args.base)
    use_base = not args.plain and not args.no_base and base.is_file()
    mode = "plain (no MWAA constraints)" if args.plain else "strict" if args.strict else "as bin/mwaa-package ships it"
    print(f"mwaa-check: {requirements.name} for CPython {PYTHON_VERSION} manylinux x86_64, wheels only, {mode}")
    problems: list[str] = []
    if not args.plain:
        lines = requirements.read_text().splitlines()
        with_constraints = [i for i, line in enumerate(lines, 1) if MWAA_CONSTRAINT_RE.search(line)]
        if with_constraints:
            print(
                f"  note: lines {with_constraints} of {requirements.name} match MWAA's constraints test ('-c ' or "
                "'--constraint ', comments included): uploaded as is, MWAA would not force its Airflow constraints. "
                "Upload the requirements.txt bin/mwaa-package writes."
            )
        if overrides is not None:
            published = pins(Path(args.constraints))
            for name, version in sorted(pins(overrides).items()):
                print(f"  override: {name} {published.get(name, '(unpinned)')} -> {version} ({overrides.name})")

    with tempfile.TemporaryDirectory(prefix="mwaa-check-") as tmp:
        tmpdir = Path(tmp)
        pip_args = ["-r", str(requirements)]
        constrained: set[str] = set()
        if not args.plain:
            merged = tmpdir / "constraints.txt"
            published_text = Path(args.constraints).read_text()
            merged.write_text(published_text if overrides is None else package.merged_constraints(published_text))
            constrained = set(pins(merged)) | set(pins(Path(args.essential)))
            pip_args += ["-c", str(merged), "-c", str(Path(args.essential).resolve())]
        report = tmpdir / "report.json"
        started = time.monotonic()
        run = dry_run(sys.executable, [*pip_args, *(["-r", str(base)] if use_base else [])], report)
        if run.returncode != 0:
            output = (run.stdout + run.stderr).splitlines()
            start = next((i for i, line in enumerate(output) if line.startswith(("ERROR", "The conflict"))), 0)
            errors = [line for line in output[start:] if line.strip() and "Requires-Python" not in line]
            print("\n".join(errors[:40]), file=sys.stderr)
            print(f"mwaa-check: CONFLICT: {requirements.name} does not resolve (above)", file=sys.stderr)
            return 1
        if args.report:
            Path(args.report).write_text(report.read_text())
        packages = resolved(report)
        elapsed = time.monotonic() - started

        base_packages: dict[str, dict] = {}
        if use_base:
            base_report = tmpdir / "base.json"
            base_run = dry_run(sys.executable, ["-r", str(base), *pip_args[2:]], base_report)
            if base_run.returncode == 0:
                base_packages = resolved(base_report)

    size = sizes([entry["url"] for entry in packages.values()])
    direct = set(requirement_names(requirements))
    tested = pins(Path(args.tested)) if Path(args.tested).is_file() else {}
    print(f'  resolved {len(packages)} packages in {elapsed:.0f} s ("requested": named by {requirements.name}):')
    for key in sorted(packages):
        entry = packages[key]
        marks = []
        if key in direct:
            marks.append("requested")
        if key in tested and tested[key] != entry["version"]:
            marks.append(f"tested {tested[key]}")
        if base_packages and key in base_packages and base_packages[key]["version"] == entry["version"]:
            marks.append("in MWAA's image")
        line = f"    {entry['name']}=={entry['version']}  {size.get(entry['url'], 0) / 1e6:.2f} MB"
        print(line + (f"  ({', '.join(marks)})" if marks else ""))
        if key in HEAVY and not args.plain:
            problems.append(f"{entry['name']} would be installed: keep it out of the Airflow environment")
        # A pin in MWAA's constraints is Airflow's tested choice; an unpinned one far below ours is pip backtracking.
        backtracked = key in direct and key in tested and key not in constrained
        if backtracked and major(entry["version"]) < major(tested[key]):
            problems.append(
                f"{entry['name']} resolves to {entry['version']}, an older major version than the tested "
                f"{tested[key]}, and no constraint pins it: pip backtracked because a newer one conflicts (try "
                f"`{entry['name']}>={tested[key]}` in a copy of the requirements to see pip's reason)"
            )
    total = sum(size.get(entry["url"], 0) for entry in packages.values())
    print(f"  download: {mb(total)} for {len(packages)} wheels")
    if base_packages:
        beyond = [
            k for k, e in packages.items() if k not in base_packages or base_packages[k]["version"] != e["version"]
        ]
        extra = sum(size.get(packages[k]["url"], 0) for k in beyond)
        print(f"  beyond MWAA's own packages: {len(beyond)} wheels, {mb(extra)} (installed at every environment start)")
    if problems:
        for problem in problems:
            print(f"mwaa-check: CONFLICT: {problem}", file=sys.stderr)
        return 1
    print("mwaa-check: OK: no conflict")
    return 0


if __name__ == "__main__":
    sys.exit(main())

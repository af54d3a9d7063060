"""Build the Amazon MWAA upload layout (see mwaa/README.md): the DAGs folder, plugins.zip, requirements.txt and the
startup script, deterministically, from this checkout. Run by `make mwaa` (bin/mwaa-package)."""

from __future__ import annotations

import argparse
import re
import shutil
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MWAA = ROOT / "mwaa"
OVERRIDES = MWAA / "overrides-3.3.1.txt"
DAGS_PATH = "/usr/local/airflow/dags"  # where MWAA syncs the S3 DAGs folder
CONSTRAINTS_NAME = "constraints-3.3.1-llava.txt"
# The code the DAGs, the plugin and the deadline alerts import, shipped in plugins.zip beside the plugin: Airflow 3
# puts the plugins folder on sys.path in every process (settings.prepare_syspath_for_config_and_plugins), the DAGs
# folder only while parsing DAGs (dag-processor, task runner). The API server (the Costs & quality view imports
# tasks.dashboard, tasks.common) and the triggerer (a deadline's AsyncCallback imports tasks.common.notifications by
# path) never parse DAGs. tasks/common/settings.py finds include/ beside tasks/. The plugins folder's .airflowignore
# keeps Airflow's plugin loader, which imports every .py file under that folder by its bare name, out of both.
CODE = ("tasks", "include")
ZIP_DATE = (2026, 1, 1, 0, 0, 0)  # fixed timestamps: the same checkout gives byte-identical archives


def _files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


def merged_constraints(published: str | None = None) -> str:
    """MWAA's published constraints with this project's overrides (mwaa/overrides-3.3.1.txt) replacing their pins."""
    overrides = {
        re.split(r"[=<>!~]", line, maxsplit=1)[0].lower().replace("_", "-"): line
        for line in OVERRIDES.read_text().splitlines()
        if line and not line.startswith("#")
    }
    lines = []
    text = (MWAA / "constraints-3.3.1.txt").read_text() if published is None else published
    for line in text.splitlines():
        name = re.split(r"[=<>!~]", line, maxsplit=1)[0].lower().replace("_", "-")
        lines.append(overrides.pop(name) + "  # overridden: mwaa/overrides-3.3.1.txt" if name in overrides else line)
    return "\n".join([*lines, *overrides.values()]) + "\n"


def requirements() -> str:
    """requirements.txt as MWAA installs it: our constraints first, then the project's own requirements."""
    own = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    return "\n".join([f'--constraint "{DAGS_PATH}/{CONSTRAINTS_NAME}"', *own]) + "\n"


def _zip(files: list[tuple[Path, str]], target: Path) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in files:
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)


def build(out: Path) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    dags = out / "dags"
    dags.mkdir(parents=True)
    for source in sorted((ROOT / "dags").glob("*.py")):
        shutil.copy2(source, dags / source.name)
    (dags / ".airflowignore").write_text(f"{CONSTRAINTS_NAME}\n")
    (dags / CONSTRAINTS_NAME).write_text(merged_constraints())
    plugins = ROOT / "plugins"
    members = [(path, path.relative_to(plugins).as_posix()) for path in _files(plugins)]
    members += [(path, path.relative_to(ROOT).as_posix()) for folder in CODE for path in _files(ROOT / folder)]
    ignore = out / ".airflowignore"  # written into the archive, then removed
    ignore.write_text("".join(f"{folder}/\n" for folder in CODE))
    _zip(sorted([*members, (ignore, ".airflowignore")], key=lambda member: member[1]), out / "plugins.zip")
    ignore.unlink()
    (out / "requirements.txt").write_text(requirements())
    shutil.copy2(MWAA / "startup.sh", out / "startup.sh")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "mwaa")
    out = build(parser.parse_args().out)
    print(f"MWAA layout in {out}: upload dags/ to the DAGs folder, plugins.zip, requirements.txt and startup.sh")
    print(
        "  tasks/ and include/ are in plugins.zip: a code change needs a new plugins.zip version (update-environment)"
    )


if __name__ == "__main__":
    main()

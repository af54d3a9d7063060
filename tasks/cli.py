"""Command-line entry points for people (and `make demo`): `python -m tasks.cli <command> --help`."""

from __future__ import annotations

import argparse
import logging

from tasks.settings import load_settings
from tasks.storage import read_json, storage_path


def _write_digits(args: argparse.Namespace) -> None:
    from tasks.demo_data import write_labelled

    n = write_labelled(storage_path(args.dest, load_settings().aws_conn_id))
    print(f"wrote {n} digit images under {args.dest}")


def _curation_summary(args: argparse.Namespace) -> None:
    from tasks.curation import REPORT_NAME, summary

    report = read_json(storage_path(args.dataset_uri, load_settings().aws_conn_id) / REPORT_NAME)
    if report is None:
        raise SystemExit(f"no {REPORT_NAME} under {args.dataset_uri}: curation did not complete there")
    print(summary(report))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m tasks.cli", description=__doc__)
    sub = parser.add_subparsers(required=True)

    p = sub.add_parser("write-digits", help="write scikit-learn digits as <dest>/<label>/*.png")
    p.add_argument("dest", help="destination URI (file:// or s3://)")
    p.set_defaults(func=_write_digits)

    p = sub.add_parser("curation-summary", help="print the readable summary of a curated dataset")
    p.add_argument("dataset_uri")
    p.set_defaults(func=_curation_summary)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

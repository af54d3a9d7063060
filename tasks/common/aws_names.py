"""SageMaker's rule for resource names (training jobs, models, endpoint configs, endpoints, transform jobs): 1-63
letters, digits and hyphens, starting with a letter or digit. Applied on both backends, so a name that works locally
works in production."""

from __future__ import annotations

import re

MAX_NAME = 63
# Endpoints (and their models and configs, named after them) start with this: the Airflow role's IAM policy
# (include/aws/airflow-role-policy.json) lets it create, update and delete only `llava-*` resources.
ENDPOINT_PREFIX = "llava-"
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def slug(text: str) -> str:
    """`text` with every run of other characters turned into one hyphen."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def sagemaker_name(readable: str, digest: str) -> str:
    """`<readable>-<digest8>`, `readable` (already valid characters: see `slug`) cut so the whole fits 63
    characters; the digest keeps names that were cut to the same prefix apart."""
    suffix = digest[:8]
    return f"{readable[: MAX_NAME - len(suffix) - 1].rstrip('-')}-{suffix}"


def check_sagemaker_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{what} {name!r}: 1-63 letters, digits and hyphens, starting with a letter or digit")
    return name

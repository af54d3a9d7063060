"""AWS container image URIs for a region, from committed tables copied out of the SageMaker SDK.

AWS publishes its Deep Learning Containers from a different ECR account in some regions; the SDK knows which, but
the Airflow environment should not need the whole SDK for one lookup. Each table (`include/**/<name>.json`) holds
`repository`, `tag` and `accounts` (region -> account id) plus a `_source` saying where it was copied from.
"""

from __future__ import annotations

import json
from pathlib import Path


def ecr_image_uri(table: Path, region: str) -> str:
    """`<account>.dkr.ecr.<region>.<dns suffix>/<repository>:<tag>` for `region`; an unknown region is an error."""
    from botocore.loaders import create_loader
    from botocore.regions import EndpointResolver

    doc = json.loads(table.read_text(encoding="utf-8"))
    account = doc["accounts"].get(region)
    if account is None:
        raise ValueError(f"no {doc['repository']} image known for region {region!r}; see {table}")
    resolver = EndpointResolver(create_loader().load_data("endpoints"))
    suffix = resolver.get_partition_dns_suffix(resolver.get_partition_for_region(region))
    return f"{account}.dkr.ecr.{region}.{suffix}/{doc['repository']}:{doc['tag']}"

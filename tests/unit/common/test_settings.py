from __future__ import annotations

import pytest

from tasks.common.settings import REPO_ROOT, load_settings


def test_defaults_are_the_local_backend_on_repo_storage() -> None:
    s = load_settings({})
    assert s.backend == "local" and not s.requires_pager
    assert s.storage_uri == (REPO_ROOT / ".data").as_uri()
    assert (s.aws_conn_id, s.taxonomy) == ("aws_default", "digits")


def test_production_settings() -> None:
    s = load_settings(
        {"PIPELINE_BACKEND": "SageMaker", "PIPELINE_STORAGE_URI": "s3://bucket/prefix/", "PIPELINE_REGION": "eu-west-1"}
    )
    assert (s.backend, s.storage_uri, s.region, s.taxonomy) == ("sagemaker", "s3://bucket/prefix", "eu-west-1", "hotel")


def test_relative_storage_is_anchored_at_the_repo() -> None:
    assert load_settings({"PIPELINE_STORAGE_URI": "elsewhere"}).storage_uri == (REPO_ROOT / "elsewhere").as_uri()


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="PIPELINE_BACKEND must be one of"):
        load_settings({"PIPELINE_BACKEND": "azure"})

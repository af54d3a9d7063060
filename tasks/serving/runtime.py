"""The serving runtime: the DJL LMI container that production endpoints run."""

from __future__ import annotations

from tasks.common.settings import INCLUDE_DIR

DJL_IMAGE_TABLE = INCLUDE_DIR / "serving" / "djl_lmi_image.json"


def djl_lmi_image_uri(region: str) -> str:
    """The DJL LMI (vLLM) container for `region`, from the committed table (see its `_source`)."""
    from tasks.common.aws_images import ecr_image_uri

    return ecr_image_uri(DJL_IMAGE_TABLE, region)

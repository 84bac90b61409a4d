"""Test-wide settings: no test may touch the network, and the real annotations are found beside the checkout."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ANNOTATIONS = REPO_ROOT.parent / "shared" / "data" / "cir-annotations"


@pytest.fixture(scope="session")
def real_annotations() -> Path:
    """The folder of the real FashionIQ and CIRR annotation files (``../shared/data/cir-annotations``)."""
    if not SHARED_ANNOTATIONS.is_dir():
        pytest.fail(f"{SHARED_ANNOTATIONS}: the real CIR annotations are missing (expected beside the checkout)")
    return SHARED_ANNOTATIONS

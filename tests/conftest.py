"""Shared fixtures: one Ray instance per test session, paths to the optional shared datasets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OBJMAE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real COCO-mini and hymenoptera photos); tests using it skip when absent."""
    if not (SHARED_DATA / "coco-mini").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """Start a private local Ray (with dashboard, see DESIGN.md) once for the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=int(os.environ.get("OBJMAE_TEST_CPUS", "4")),
            include_dashboard=True,
            _temp_dir=str(tmp_path_factory.mktemp("ray")),
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()

"""Shared fixtures: one Ray instance per test session, paths to the optional shared datasets."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import Phase, settings

from objmae_ray.config import SweepSpec
from objmae_ray.sweep.rundir import save_spec
from run_helpers import SPEC, make_trial
from s3_helpers import moto_server

REPO = Path(__file__).resolve().parents[1]
# scripts/mutation.sh (--hypothesis-profile=mutation): one failing example kills a mutant, so no shrinking,
# and no example database, so every run tries the same examples
settings.register_profile("mutation", phases=[Phase.explicit, Phase.generate], database=None)
SHARED_DATA = Path(os.environ.get("OBJMAE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real COCO-mini and hymenoptera photos); tests using it skip when absent."""
    if not (SHARED_DATA / "coco-mini").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One simulated multi-node Ray cluster for the whole test session (started once).

    A head that schedules nothing (CPU 0, like cluster/gpu.yaml) with the dashboard on (see
    docs/ARCHITECTURE.md: Train's cleanup needs the State API), plus two worker nodes of
    OBJMAE_TEST_CPUS CPUs each, so every Ray test also exercises multi-node placement.
    Like cluster/*.yaml, it starts with token authentication (a session token in a temporary file,
    RAY_AUTH_TOKEN_PATH; this machine's ~/.ray/auth_token is left alone), Train state tracking on
    (the dashboard's Train API) and a local `objmae-sweep`'s Train poll interval (RAY_START_ENV). All are
    environment variables that the test process's children (`objmae-sweep` drivers) inherit.
    Tests that remove nodes must add their own node first and remove only that one.
    """
    import secrets

    import ray
    from ray.cluster_utils import Cluster

    token = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    token.write_text(secrets.token_hex(32))
    from objmae_ray.sweep.tuner import RAY_START_ENV

    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), **RAY_START_ENV)
    # this process read Ray's config when ray was imported: reload it and the token, as Ray's own
    # ray.init does when it turns token auth on (authentication_token_setup._enable_token_auth)
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    cpus = int(os.environ.get("OBJMAE_TEST_CPUS", "2"))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": True},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=cpus)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def ray_session(ray_cluster):
    """The `ray` module, connected to the session's cluster."""
    import ray

    return ray


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished 2 x 2 run (alpha 0.25 / 0.5, two seeds each) with checkpoints (tests/run_helpers.py)."""
    run = tmp_path / "runs" / "exp-1"
    save_spec(SweepSpec.model_validate(SPEC), str(run))
    make_trial(run, "a0", 0.25, 0, [50.0, 60.0], seed=1, speedup=3.5)
    make_trial(run, "a1", 0.25, 1, [55.0, 70.0], seed=2, speedup=3.5)  # best final top-1
    make_trial(run, "b0", 0.5, 0, [80.0, 65.0], seed=3, speedup=1.9)   # best top-1 mid-run, not at the end
    make_trial(run, "b1", 0.5, 1, [40.0, 61.0], seed=4, speedup=1.9)
    return run


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A moto S3 server with bucket `runs` for the module; the AWS variables set while the module runs."""
    with moto_server() as aws, pytest.MonkeyPatch.context() as mp:
        for key, value in aws.items():
            mp.setenv(key, value)
        yield aws

"""Cluster behaviour: the shipped search spaces fit cluster/gpu.yaml (offline), and on the session's simulated
multi-node cluster (a CPU-0 head with the dashboard + two worker nodes, tests/conftest.py) a sweep run through
`objmae-sweep --address` spreads its trials' Train workers over several nodes, is visible through the
dashboard's HTTP API, and survives a worker node removed mid-sweep (chaos).

Placement is proven with the State API (`ray.util.state.list_actors`): Ray Train V2's worker actor class is
`RayTrainWorker` (ray/train/v2/_internal/execution/worker_group/worker.py), its per-run actor `TrainController`,
and a Tune function trainable's actor `ImplicitFunc` (repr: the trainable's name, `sweep_trainable`).

Run with `flock /tmp/objmae-ray.lock` (one Ray cluster per machine)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from objmae_ray.sweep.cluster import load_cluster_config, trial_fits
from objmae_ray.config import ResourcesConfig
from objmae_ray.results.records import records_from_dir
from objmae_ray.sweep.space import base_trial, search_paths
from objmae_ray.sweep.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))
GPU_YAML = REPO / "cluster" / "gpu.yaml"
# Data paths the paper's spaces read from ${VAR}s; validation needs values, not existing directories.
DUMMY_ENV = {"OBJMAE_COCO_ROOT": "/data/coco", "OBJMAE_IN100_ROOT": "/data/imagenet100",
             "OBJMAE_IN100_CAM": "/data/imagenet100/cam.safetensors", "OBJMAE_CIFAR_ROOT": "/data/cifar100",
             "OBJMAE_COCO_STORE": "/data/stores/coco", "OBJMAE_IN100_STORE": "/data/stores/in100",
             "OBJMAE_IN100_CAM_STORE": "/data/stores/in100-cam", "OBJMAE_CIFAR_STORE": "/data/stores/cifar100"}
CPU_SPACES = {"smoke.yaml", "sanity.yaml"}  # CPU-only spaces: checked against a 2-core laptop instead of the GPU cluster
LAPTOP_CPUS = 2


# ---- offline: search spaces vs cluster/gpu.yaml -----------------------------------------------------------
def load_space(path: Path, monkeypatch, overrides: tuple[str, ...] = ()):
    for key, value in DUMMY_ENV.items():
        monkeypatch.setenv(key, value)
    return load_spec(path, overrides)


def concurrent(res: ResourcesConfig, trials: int) -> ResourcesConfig:
    """`trials` trials at once as one bundle request: trials x num_workers identical worker bundles."""
    return res.model_copy(update={"num_workers": res.num_workers * trials})


def laptop(cpus: int) -> dict:
    """A CPU-only single machine in cluster-config form (what `ray.init()` on a laptop gives)."""
    return {"head_node_type": "head",
            "available_node_types": {"head": {"resources": {"CPU": 0}},
                                     "laptop": {"resources": {"CPU": cpus, "GPU": 0}, "max_workers": 1}}}


def test_every_search_space_is_checked():
    assert {p.name for p in SPACES} >= {"smoke.yaml", "alpha.yaml", "padding.yaml", "patch_size.yaml",
                                        "selection.yaml", "transfer.yaml", "joint.yaml"}


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_search_space_trials_fit_their_cluster(path, monkeypatch):
    """Per-trial Train resources (base.resources; no space searches them) fit a node type of gpu.yaml, and
    `concurrency` trials at once fit the cluster at its maximum size. smoke.yaml is a CPU space: it must
    fit a 2-core laptop with its Tune drivers (driver_cpus each) instead."""
    spec = load_space(path, monkeypatch)
    assert not any(p.startswith("resources.") for p in search_paths(spec).values())
    res = base_trial(spec).resources
    if path.name in CPU_SPACES:
        assert not res.use_gpu
        per_trial = spec.driver_cpus + res.num_workers * res.cpus_per_worker
        assert spec.concurrency * per_trial <= LAPTOP_CPUS
        assert trial_fits(concurrent(res, spec.concurrency), laptop(LAPTOP_CPUS)) == ["laptop"]
        return
    cluster = load_cluster_config(GPU_YAML)
    assert res.use_gpu and res.gpus_per_worker >= 1
    assert trial_fits(res, cluster), f"{path.name}: one trial ({res}) fits no node type of {GPU_YAML.name}"
    assert trial_fits(concurrent(res, spec.concurrency), cluster), \
        f"{path.name}: {spec.concurrency} concurrent trials exceed {GPU_YAML.name} at max_workers"


def test_fit_check_refuses_what_gpu_yaml_cannot_host(monkeypatch):
    cluster = load_cluster_config(GPU_YAML)
    alpha = SPACES[[p.name for p in SPACES].index("alpha.yaml")]
    too_wide = load_space(alpha, monkeypatch, ("resources.gpus_per_worker=16",))  # no node has 16 GPUs
    assert trial_fits(base_trial(too_wide).resources, cluster) == []
    fat_workers = load_space(alpha, monkeypatch, ("resources.cpus_per_worker=12",))  # only the 96-CPU type
    assert trial_fits(base_trial(fat_workers).resources, cluster) == ["gpu_8x"]
    # 2 x gpu_8x hold 16 workers of 12 CPUs: concurrency 17 no longer fits
    assert trial_fits(concurrent(base_trial(fat_workers).resources, 16), cluster)
    assert trial_fits(concurrent(base_trial(fat_workers).resources, 17), cluster) == []
    smoke = load_space(SPACES[[p.name for p in SPACES].index("smoke.yaml")], monkeypatch,
                       ("resources.cpus_per_worker=3",))
    assert trial_fits(base_trial(smoke).resources, laptop(LAPTOP_CPUS)) == []


# ---- helpers for the Ray tests ----------------------------------------------------------------------------
def sweep_file(tmp_path: Path, name: str, *, cpus_per_worker: float, extra: str, pretrain_epochs: int = 1,
               transfer_data: str = "{num_images: 32, loader_workers: 0}") -> Path:
    """A micro grid sweep: 32 px, tiny synthetic set (or `transfer_data`), one Train worker per trial."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""\
study: {name}
objectives:
  - {{metric: top1, mode: max}}
sampler: {{kind: grid, seed: 0}}
concurrency: 2
storage: {tmp_path / 'runs'}
base:
  model: {{preset: micro, img_size: 32, patch_size: 8}}
  pretrain: {{epochs: {pretrain_epochs}, warmup_epochs: 0, batch_size: 16, lr: 1.0e-3, data: {{num_images: 32, loader_workers: 0}}}}
  transfer:
    - {{epochs: 1, warmup_epochs: 0, batch_size: 16, lr: 1.0e-3, data: {transfer_data}}}
  resources: {{num_workers: 1, cpus_per_worker: {cpus_per_worker}}}
  max_failures: 1
  checkpoint_every: 1   # every epoch (the default, every 15 minutes, never comes in a test)
{extra}""")
    return path


def start_sweep(ray, spec: Path, name: str, log: Path) -> subprocess.Popen:
    """`objmae-sweep SPEC --address <session cluster>` in its own process (a separate Ray job)."""
    address = ray.get_runtime_context().gcs_address
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "objmae_ray.cli", str(spec), "--address", address,
                                 "--name", name], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)


def wait_sweep(driver: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        rc = driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
        pytest.fail(f"sweep did not finish in {timeout:.0f} s; log tail:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert rc == 0, f"objmae-sweep exited {rc}; log tail:\n{text[-3000:]}"
    return text


def actors(class_name: str, **filters) -> list:
    """State API: every actor of this class (alive or dead), with node ids."""
    from ray.util.state import list_actors

    query = [("class_name", "=", class_name)] + [(k, "=", v) for k, v in filters.items()]
    return list_actors(filters=query, detail=True, limit=10_000, raise_on_missing_output=False)


def actor_ids(*class_names: str) -> set[str]:
    return {a.actor_id for name in class_names for a in actors(name)}


def base_nodes(ray_cluster) -> dict[str, float]:
    """node id -> CPUs of the session's two worker nodes (never removed by tests)."""
    import ray

    cpus = {n["NodeID"]: n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]}
    return {node.node_id: cpus[node.node_id] for node in ray_cluster.worker_nodes if node.node_id in cpus}


def trial_checkpoints(run: Path, trial_id: str) -> list[Path]:
    """Checkpoints the trial's inner Train run keeps under the sweep's one storage path."""
    return sorted((run / f"train-{trial_id}").glob("checkpoint_p*"))


def attempts(history: list[dict]) -> list[list[tuple[int, int]]]:
    """(phase_index, epoch) of each report, split into worker-group attempts (`loop_start_at` changes)."""
    groups: dict[float, list[tuple[int, int]]] = {}
    for report in history:
        groups.setdefault(report["loop_start_at"], []).append((int(report["phase_index"]), int(report["epoch"])))
    return [groups[key] for key in sorted(groups)]


# ---- multi-node sweep + dashboard -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multinode_sweep(ray_session, ray_cluster, tmp_path_factory):
    """Two trials at once whose worker (3/4 of a node's CPUs) fits only one per node: they must spread."""
    tmp = tmp_path_factory.mktemp("multinode")
    node_cpus = min(base_nodes(ray_cluster).values())
    spec = sweep_file(tmp, "multinode", cpus_per_worker=0.75 * node_cpus,
                      extra="search_space:\n  padding: {choices: [zero, random]}\n")
    before = actor_ids("RayTrainWorker", "TrainController", "ImplicitFunc")
    log = tmp / "sweep.log"
    text = wait_sweep(start_sweep(ray_session, spec, "mn", log), log, timeout=600)
    new = {name: [a for a in actors(name) if a.actor_id not in before]
           for name in ("RayTrainWorker", "TrainController", "ImplicitFunc")}
    return {"run": tmp / "runs" / "mn", "log": text, "actors": new, "node_cpus": node_cpus}


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_trials_land_on_several_nodes_under_one_storage_path(multinode_sweep, ray_cluster):
    run, new = multinode_sweep["run"], multinode_sweep["actors"]
    records = records_from_dir(run)
    assert len(records) == 2 and all(r.status == "done" for r in records)
    # one Train worker per trial (num_workers 1, no restarts), each on a different worker node, none on the head
    workers = new["RayTrainWorker"]
    assert len(workers) == 2 and len(new["TrainController"]) == 2
    assert len({w.node_id for w in workers}) == 2
    assert {w.node_id for w in workers} <= set(base_nodes(ray_cluster))
    assert ray_cluster.head_node.node_id not in {a.node_id for group in new.values() for a in group}
    # Tune trial dirs, the inner Train runs and their checkpoints all live under the one run path
    for record in records:
        assert Path(record.path).parent == run
        assert trial_checkpoints(run, record.trial_id), f"no checkpoint under {run} for {record.trial_id}"
        assert Path(record.last["checkpoint_path"]).resolve().is_relative_to(run.resolve())


def dashboard_get(url: str, headers: dict | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_dashboard_lists_the_sweeps_actors(multinode_sweep, ray_cluster):
    """The run prints the dashboard URL; the dashboard's State HTTP API lists the sweep's Tune trial actors,
    Train controllers and Train workers (on their nodes), with a bearer token when token auth is on."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    url = f"http://{ray_cluster.webui_url}"
    assert f"Ray dashboard: {url}" in multinode_sweep["log"].splitlines()
    headers = get_auth_headers_if_auth_enabled({})
    if is_token_auth_enabled():  # Ray 2.60 default for new local clusters: requests need the token
        with pytest.raises(urllib.error.HTTPError) as refused:
            dashboard_get(f"{url}/api/v0/actors?limit=1")
        assert refused.value.code == 401 and headers
    listed = dashboard_get(f"{url}/api/v0/actors?limit=10000&detail=1", headers)["data"]["result"]["result"]
    by_id = {a["actor_id"]: a for a in listed}
    for name, group in multinode_sweep["actors"].items():
        for actor in group:
            assert by_id[actor.actor_id]["class_name"] == name
            assert by_id[actor.actor_id]["node_id"] == actor.node_id
    trial_actors = [by_id[a.actor_id] for a in multinode_sweep["actors"]["ImplicitFunc"]]
    assert len(trial_actors) == 2 and {a["repr_name"] for a in trial_actors} == {"sweep_trainable"}
    nodes = dashboard_get(f"{url}/nodes?view=summary", headers)["data"]["summary"]
    alive = {n["raylet"]["nodeId"] for n in nodes if n["raylet"]["state"] == "ALIVE"}
    assert {a.node_id for a in multinode_sweep["actors"]["RayTrainWorker"]} <= alive


# ---- chaos: a worker node removed mid-sweep ---------------------------------------------------------------
# The long trial's pre-train epochs: a 2-step epoch reports every ~0.5 s (the controller's poll, RAY_START_ENV),
# so it needs enough of them to be still running when the node goes (20 finished before that in one CI run).
LONG = 80


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_removed_node_trial_resumes_elsewhere_and_finished_trial_is_kept(ray_session, ray_cluster, tmp_path):
    """Like a spot reclaim: a third node (added here, 2 CPUs) hosts both trials' Train workers; once the short
    trial has finished and the long one has checkpoints, the node is removed without a graceful shutdown.
    The long trial's worker group restarts on a base node from its latest checkpoint (Train FailureConfig);
    the finished trial is not rerun; the sweep ends with both trials done.

    Placement is forced with blocker actors: the new node is full until both Tune drivers (0.1 CPU) run on
    base nodes (a removed driver node would fail the trial: sweep.py's Tune FailureConfig has max_failures=0),
    and the base nodes keep only 0.5 CPU free until the removal, too little for a 1-CPU Train worker."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    class Blocker:
        def ready(self) -> bool:
            return True

    def block(node_id: str, cpus: float):
        actor = Blocker.options(num_cpus=cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
                                ).remote()
        ray.get(actor.ready.remote(), timeout=60)
        return actor

    bases = base_nodes(ray_cluster)
    chaos = ray_cluster.add_node(num_cpus=2)
    ray_cluster.wait_for_nodes()
    blockers = {}
    driver = None
    try:
        blockers["chaos"] = block(chaos.node_id, 2)
        for node_id, cpus in bases.items():
            blockers[node_id] = block(node_id, cpus - 0.5)
        spec = sweep_file(tmp_path, "chaos", cpus_per_worker=1,
                          extra=f"search_space:\n  pretrain.epochs: {{choices: [1, {LONG}]}}\n")
        before = actor_ids("RayTrainWorker", "TrainController", "ImplicitFunc")
        log = tmp_path / "sweep.log"
        run = tmp_path / "runs" / "chaos"
        driver = start_sweep(ray_session, spec, "chaos", log)

        deadline = time.time() + 300
        while len([a for a in actors("ImplicitFunc", state="ALIVE") if a.actor_id not in before]) < 2:
            assert driver.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        ray.kill(blockers.pop("chaos"))  # now the Train workers can only go to the chaos node

        def progress():
            records = {r.params["pretrain.epochs"]: r for r in records_from_dir(run)} if run.is_dir() else {}
            short, long_ = records.get(1), records.get(LONG)
            if not (short and long_ and short.status == "done" and not long_.last.get("done", False)):
                return None
            ended = [a for a in actors("TrainController", state="DEAD") if a.actor_id not in before]
            if not ended:  # the short trial's fit() has not returned yet: its worker may still be on the node
                return None
            epochs = [int(p.name.rsplit("_e", 1)[1]) for p in trial_checkpoints(run, long_.trial_id)
                      if p.name.startswith("checkpoint_p0_")]
            return (short, max(epochs)) if epochs and max(epochs) >= 2 else None

        while (state := progress()) is None:
            assert driver.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        short, checkpointed = state
        time.sleep(3)  # > a few controller polls (0.5 s): usually the checkpoint seen on disk is registered by now
        short_results = Path(short.path, "result.json").read_text()
        workers = [a for a in actors("RayTrainWorker") if a.actor_id not in before]
        assert {w.node_id for w in workers} == {chaos.node_id}  # both trials' workers on the doomed node
        drivers = [a for a in actors("ImplicitFunc") if a.actor_id not in before]
        assert {d.node_id for d in drivers} <= set(bases)
        for node_id in bases:  # room for the rescheduled worker group
            ray.kill(blockers.pop(node_id))
        ray_cluster.remove_node(chaos, allow_graceful=False)
        chaos = None

        wait_sweep(driver, log, timeout=420)
    finally:
        for actor in blockers.values():
            ray.kill(actor)
        if chaos is not None:
            ray_cluster.remove_node(chaos)
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()

    records = {r.params["pretrain.epochs"]: r for r in records_from_dir(run)}
    assert sorted(records) == [1, LONG] and all(r.status == "done" for r in records.values())
    # the finished trial: untouched, one worker-group attempt
    assert Path(records[1].path, "result.json").read_text() == short_results
    assert attempts(records[1].history) == [[(0, 0), (1, 0)]]
    # the interrupted trial: two attempts; the second resumes from a checkpoint (not from scratch): at the
    # latest the one seen on disk at removal, at worst the one before it (written but not yet registered
    # by Train's controller when the node died, a race of one report), so at most one epoch is redone,
    # and together the attempts cover the trial
    runs = attempts(records[LONG].history)
    assert len(runs) == 2, runs
    first, second = runs
    assert second[0][0] == 0 and second[0][1] >= checkpointed > 0, (checkpointed, runs)
    assert first[: second[0][1]] == [(0, e) for e in range(second[0][1])]
    assert len(first) - second[0][1] <= 1
    assert second == [(0, e) for e in range(second[0][1], LONG)] + [(1, 0)]
    # its new worker ran on a base node; no Tune driver was restarted
    new_workers = [a for a in actors("RayTrainWorker") if a.actor_id not in before]
    assert len(new_workers) == 3
    assert len([w for w in new_workers if w.node_id in bases]) == 1
    assert len([a for a in actors("ImplicitFunc") if a.actor_id not in before]) == 2


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_trial_drivers_go_to_the_node_offering_the_driver_resource(ray_session, ray_cluster, tmp_path):
    """cluster/gpu.yaml's head offers `objmae_driver`: every trial's Tune driver must land there."""
    from ray import tune

    from objmae_ray.sweep.cluster import DRIVER_RESOURCE
    from objmae_ray.sweep.spec import load_spec
    from objmae_ray.sweep.tuner import _with_resources, driver_resources

    spec = load_spec(REPO / "search_spaces" / "smoke.yaml")
    assert driver_resources(spec) == {"cpu": spec.driver_cpus}  # the base cluster has no such resource
    def resources_become(expected):  # the GCS view of cluster resources lags node changes a little
        deadline = time.time() + 60
        while driver_resources(spec) != expected and time.time() < deadline:
            time.sleep(0.5)
        return driver_resources(spec) == expected

    node = ray_cluster.add_node(num_cpus=0, resources={DRIVER_RESOURCE: 4})
    ray_cluster.wait_for_nodes()
    try:
        assert resources_become({"cpu": 0, DRIVER_RESOURCE: 1})

        def where(config):
            tune.report({"node_id": ray_session.get_runtime_context().get_node_id()})

        tuner = tune.Tuner(_with_resources(spec, where), param_space={"i": tune.grid_search([0, 1, 2])},
                           run_config=tune.RunConfig(storage_path=str(tmp_path), name="drivers"))
        results = tuner.fit()
        assert not results.errors
        assert {r.metrics["node_id"] for r in results} == {node.node_id}
    finally:
        ray_cluster.remove_node(node)
    assert resources_become({"cpu": spec.driver_cpus})


# ---- capacity at sweep start, data checks where the workers read ------------------------------------------
@pytest.mark.ray
def test_sweep_start_refuses_a_worker_no_live_node_can_host(ray_session, ray_cluster, tmp_path):
    """The session cluster has no autoscaler: its live nodes are the node types. A worker of 3 CPUs (the
    nodes have 2) is refused once, naming the field and the largest node; 1 CPU passes (no waiting)."""
    from objmae_ray.errors import ConfigError
    from objmae_ray.sweep.tuner import check_cluster

    node_cpus = max(base_nodes(ray_cluster).values())
    spec = load_spec(sweep_file(tmp_path, "cap", cpus_per_worker=node_cpus + 1,
                                extra="search_space:\n  padding: {choices: [zero, random]}\n"))
    with pytest.raises(ConfigError) as refused:
        check_cluster(spec, echo=pytest.fail)
    assert str(refused.value).startswith(f"base.resources.cpus_per_worker: a worker needs {node_cpus + 1:g} CPUs, "
                                         f"but the largest node type, node ")
    assert str(refused.value).endswith(f"has {node_cpus:g} (the cluster's nodes (no autoscaler))")
    fits = load_spec(sweep_file(tmp_path, "fits", cpus_per_worker=1,
                                extra="search_space:\n  padding: {choices: [zero, random]}\n"))
    assert check_cluster(fits, echo=pytest.fail) is False


@pytest.mark.ray
def test_live_resources_refusal_is_skipped_on_an_autoscaling_cluster(ray_session):
    """No GPU is live: a GPU trial is refused on a fixed cluster, but waits (is not refused) when the sweep
    found an autoscaler that can start GPU nodes (`_autoscaling` in the trial config)."""
    from objmae_ray.config import TrialConfig
    from objmae_ray.errors import ConfigError
    from objmae_ray.train.trial import check_trial

    cfg = TrialConfig.model_validate({"resources": {"use_gpu": True, "gpus_per_worker": 1}})
    with pytest.raises(ConfigError, match=r"^resources\.use_gpu: the cluster has 0 GPUs"):
        check_trial(cfg)
    check_trial(cfg, autoscaling=True)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_data_check_runs_on_a_worker_node_and_names_it(ray_session, ray_cluster, tmp_path):
    """The dataset must exist where the workers read it, not on the head or the driver. A node whose
    processes see HOME=<tmp>/worker-home holds `~/coco`; the driver's HOME has none. A trial whose worker
    (3 CPUs) fits only that node passes the check; a path missing everywhere is refused naming the node,
    which is a worker node, never the CPU-0 head."""
    from objmae_ray.config import TrialConfig
    from objmae_ray.errors import ConfigError
    from objmae_ray.train.trial import check_data

    home = tmp_path / "worker-home"
    (home / "coco").mkdir(parents=True)
    assert not Path("~/coco").expanduser().exists()
    data_node = ray_cluster.add_node(num_cpus=3, env_vars={"HOME": str(home)})
    ray_cluster.wait_for_nodes()
    try:
        def trial(root: str, cpus: float) -> TrialConfig:
            return TrialConfig.model_validate({"pretrain": {"data": {"kind": "coco", "root": root}},
                                               "resources": {"cpus_per_worker": cpus}})

        check_data(trial("~/coco", 3))  # only the data node has 3 CPUs: checked there, found
        with pytest.raises(ConfigError) as refused:
            check_data(trial("~/nope", 3))
        message = str(refused.value)
        assert message.startswith("pretrain.data.root: ~/nope not found on node ")
        assert f"node id {data_node.node_id[:12]}" in message
        with pytest.raises(ConfigError) as refused:
            check_data(trial("~/nope", 1))  # lands on any node that can run a worker
        named = refused.value.args[0].rsplit("node id ", 1)[1].rstrip(")")
        assert ray_cluster.head_node.node_id[:12] != named
        assert named in {n[:12] for n in [*base_nodes(ray_cluster), data_node.node_id]}
    finally:
        ray_cluster.remove_node(data_node)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_data_missing_on_the_workers_fails_that_trial_alone(ray_session, ray_cluster, shared_data, tmp_path):
    """A grid over the transfer dataset: real photos (hymenoptera) or a path no worker node has. The second
    trial errors with one line naming the path and the node, before any Train worker starts; the first
    trial runs to the end; the sweep reports one failed trial."""
    photos, missing = shared_data / "hymenoptera", tmp_path / "no-such-dataset"
    path = sweep_file(tmp_path, "datamiss", cpus_per_worker=1,
                      transfer_data=f'{{kind: folder, root: "{photos}", loader_workers: 0}}',
                      extra=f'search_space:\n  transfer.0.data.root: {{choices: ["{photos}", "{missing}"]}}\n')
    before = actor_ids("RayTrainWorker")
    log = tmp_path / "sweep.log"
    driver = start_sweep(ray_session, path, "dm", log)
    try:
        rc = driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    text = log.read_text()
    assert rc == 1, text[-3000:]
    assert "0 trial(s) unfinished, 1 failed" in text, text[-3000:]
    records = {r.params["transfer.0.data.root"]: r for r in records_from_dir(tmp_path / "runs" / "dm")}
    assert records[str(photos)].status == "done"
    failed = records[str(missing)]
    assert failed.status == "error" and not failed.history
    error = (Path(failed.path) / "error.txt").read_text()
    line = next(line for line in error.splitlines() if "not found on node" in line)
    assert f"transfer.0.data.root: {missing} not found on node " in line
    named = line.rsplit("node id ", 1)[1].split(")")[0]
    assert named in {n[:12] for n in base_nodes(ray_cluster)}  # a worker node, not the CPU-0 head
    assert len([a for a in actors("RayTrainWorker") if a.actor_id not in before]) == 1  # none for the failed one


# ---- the dashboard's Train view during a sweep ------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_dashboard_train_runs_show_every_running_trial(ray_session, ray_cluster, tmp_path):
    """During a sweep of two concurrent trials, the dashboard's Train API (/api/train/v2/runs/v1; the
    session cluster starts with RAY_TRAIN_ENABLE_STATE_TRACKING=1, like cluster/*.yaml) lists a RUNNING
    Train run for every Tune trial the experiment state shows RUNNING. Token auth is on: without the
    bearer token the API answers 401. The console prints the token hint next to the dashboard URL."""
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    from objmae_ray.sweep.rundir import trial_statuses

    url = f"http://{ray_cluster.webui_url}"
    headers = get_auth_headers_if_auth_enabled({})
    assert headers, "the session cluster runs with token authentication"
    with pytest.raises(urllib.error.HTTPError) as refused:
        dashboard_get(f"{url}/api/train/v2/runs/v1")
    assert refused.value.code == 401
    spec = sweep_file(tmp_path, "dash", cpus_per_worker=0.5, pretrain_epochs=60,  # ~0.5 s an epoch; killed once seen
                      extra="search_space:\n  padding: {choices: [zero, random]}\n")
    log = tmp_path / "sweep.log"
    driver = start_sweep(ray_session, spec, "dash", log)
    run = tmp_path / "runs" / "dash"
    seen: dict[str, str] = {}
    deadline = time.time() + 400
    try:
        while time.time() < deadline and len(seen) < 2:
            assert driver.poll() is None, log.read_text()[-3000:]
            try:
                running = {tid for tid, status in trial_statuses(str(run)).items() if status == "RUNNING"}
            except (json.JSONDecodeError, OSError):  # experiment state being rewritten, or not there yet
                running = set()
            runs = dashboard_get(f"{url}/api/train/v2/runs/v1", headers)["train_runs"]
            listed = {r["name"]: r["status"] for r in runs}
            # a Tune trial is RUNNING before its Train run registers: check those with a run and a report
            for tid in running:
                if listed.get(f"train-{tid}") == "RUNNING":
                    seen[tid] = listed[f"train-{tid}"]
            time.sleep(2)
    finally:
        driver.kill()
        driver.wait()
    assert len(seen) == 2, (seen, log.read_text()[-3000:])
    text = log.read_text()
    dashboard_line = f"Ray dashboard: {url}"
    lines = text.splitlines()
    assert dashboard_line in lines
    assert "`ray get-auth-token`" in lines[lines.index(dashboard_line) + 1]


# ---- storage every node shares ----------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_sweep_refuses_a_local_storage_a_worker_node_cannot_see(ray_session, ray_cluster, tmp_path):
    """The session's nodes share this machine's disk: the node preflight passes on both worker nodes (the
    CPU-0 head runs no workers and is not asked). A node added with its own disk (OBJMAE_NODE_ROOT: it sees
    absolute paths under another root, as a node without the NFS mount would) cannot read the marker the
    driver writes: the sweep is refused in one line naming --storage and that node, before any trial."""
    from objmae_ray.errors import ConfigError
    from objmae_ray.sweep.doctor import check_nodes
    from objmae_ray.sweep.tuner import run_sweep

    spec = load_spec(sweep_file(tmp_path, "shared", cpus_per_worker=1,
                                extra="search_space:\n  padding: {choices: [zero, random]}\n"))
    storage = tmp_path / "runs"
    lines: list[str] = []
    check_nodes(base_trial(spec), str(storage), echo=lines.append)
    assert lines == ["node preflight: 2 node(s) passed (precision auto -> fp32 (CPU))"]
    own_disk = tmp_path / "own-disk"
    lonely = ray_cluster.add_node(num_cpus=1, env_vars={"OBJMAE_NODE_ROOT": str(own_disk)})
    ray_cluster.wait_for_nodes()
    try:
        with pytest.raises(ConfigError) as refused:
            run_sweep(spec, storage=str(storage), name="refused", echo=lines.append)
    finally:
        ray_cluster.remove_node(lonely)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"--storage {storage}: node ")
    assert f"node id {lonely.node_id[:12]}) cannot read the marker the sweep driver wrote at {storage}/" in message
    assert message.endswith("; use --storage s3://bucket/prefix, or a path on an NFS mount that every node shares")
    assert (own_disk / str(storage).lstrip("/")).is_dir()  # the node wrote its probe on its own disk
    assert not list((storage / "refused").glob("trial_*")) and not (storage / "refused" / "sweep.yaml").exists()

"""The sweep's console lines (sweep/console.py), fed the reports of a real trial config in the order Tune
delivers them: one line per event, a restart detected when reports go back to an earlier epoch, the
failure reason reduced to one line. Driven directly (the end-to-end line count is in test_sweep_ops_ray.py)."""
from __future__ import annotations

import re
from types import SimpleNamespace

from objmae_ray.sweep.console import TrialEvents, failure_reason
from objmae_ray.sweep.space import base_trial
from objmae_ray.sweep.spec import load_spec
from test_sweep_tuner import tiny_spec


def report(phase_index: int, epoch: int, **metrics) -> dict:
    return {"phase": "pretrain" if phase_index == 0 else "finetune", "phase_index": phase_index, "epoch": epoch,
            "training_iteration": 1, **metrics}


def test_one_line_per_event_with_restart_and_failure(tmp_path):
    spec = load_spec(tiny_spec(tmp_path, "c", "search_space:\n  alpha: {choices: [0.25, 0.5]}\nnum_samples: 2\n"),
                     ["pretrain.epochs=2", "transfer.0.epochs=2"])
    lines: list[str] = []
    events = TrialEvents(spec, lines.append)
    config = {**base_trial(spec).model_dump(), "masking.alpha": 0.25, "__trial_index__": 1}
    trial = SimpleNamespace(trial_id="abc123", config=config, last_result={})
    events.on_trial_start(0, [], trial)
    for result in (report(0, 0, recon_loss=0.91), report(0, 1, recon_loss=0.85),
                   report(0, 1, recon_loss=0.85),  # the worker group restarted from the checkpoint of epoch 1
                   report(1, 0, top1=40.0), report(1, 1, top1=52.5, done=True)):
        events.on_trial_result(0, [], trial, result)
    trial.last_result = {**report(1, 1, top1=52.5), "done": True}
    events.on_trial_complete(0, [], trial)
    stopped = SimpleNamespace(trial_id="def456", config=config, last_result=report(1, 0, top1=30.0))
    events.on_trial_complete(0, [], stopped)
    failed = SimpleNamespace(trial_id="fff000", config=config, last_result={},
                             get_error=lambda: RuntimeError(
                                 "ray::sweep_trainable()\n  File x.py, line 3\nobjmae_ray.train.trial.TrialError: "
                                 "trial t: NonFiniteLossError: pretrain epoch 0 step 3: loss nan"))
    events.on_trial_error(0, [], failed)
    text = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in lines]
    assert text == [
        "trial abc123 started: alpha=0.25 (seed 1)",
        "trial abc123 pretrain epoch 1/2: recon_loss 0.91",
        "trial abc123 pretrain epoch 2/2: recon_loss 0.85",
        "trial abc123 restarted after a worker loss: from pretrain epoch 2",
        "trial abc123 pretrain epoch 2/2: recon_loss 0.85",
        "trial abc123 finetune epoch 1/2: top1 40",
        "trial abc123 finetune epoch 2/2: top1 52.5",
        "trial abc123 finished: top1 52.5",
        "trial def456 stopped early: top1 30",
        "trial fff000 failed: trial t: NonFiniteLossError: pretrain epoch 0 step 3: loss nan",
    ]
    assert all(re.match(r"^\d\d:\d\d:\d\d trial ", line) for line in lines)


def test_failure_reason_picks_the_error_line():
    assert failure_reason("Traceback ...\n  File a.py\nValueError: bad thing\n(pid=3) more context") == \
        "ValueError: bad thing"
    assert failure_reason("x\nobjmae_ray.errors.ConfigError: pretrain.data.root: /nope not found") == \
        "pretrain.data.root: /nope not found"


def test_worker_output_goes_to_the_file_and_to_the_terminal_only_with_verbose(tmp_path):
    """Ray's stream of worker output (the dispatcher `ray.init(log_to_driver=True)` prints from)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from objmae_ray.sweep.console import route_worker_output

    printed: list[dict] = []
    batch = {"lines": ["Reporting training result 1: TrainingReport(...)"], "pid": 42, "ip": "10.0.0.1",
             "actor_name": "RayTrainWorker", "is_err": True}
    try:
        for verbose in (False, True):
            dispatcher.add_handler("ray_print_logs", printed.append)  # stands in for Ray's terminal printer
            route_worker_output(tmp_path / f"{verbose}" / "workers.log", verbose=verbose)
            dispatcher.emit(batch)
            assert (tmp_path / f"{verbose}" / "workers.log").read_text() == \
                "(RayTrainWorker pid=42, ip=10.0.0.1) Reporting training result 1: TrainingReport(...)\n"
            assert printed == ([batch] if verbose else [])
    finally:
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.remove_handler("objmae_worker_output")


def test_raylet_startup_concurrency_warning_goes_to_the_worker_log_other_raylet_errors_print(tmp_path, monkeypatch,
                                                                                            capsys):
    """The raylet's errors reach the driver through ray._private.worker.print_to_stdstream (its error listener)."""
    import ray._private.worker as ray_worker

    from objmae_ray.sweep.console import route_raylet_noise

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # restored afterwards
    noise = ("WARNING: 12 PYTHON worker processes have been started on node: abc with address: 10.0.0.1, which is "
             "4x the maximum expected startup concurrency (2). This could be a result of ...")
    for verbose in (False, True):
        oom = f"Task {verbose} was killed due to the node running low on memory."  # Ray dedups repeated lines
        log = tmp_path / f"{verbose}" / "workers.log"
        log.parent.mkdir()
        route_raylet_noise(log, verbose=verbose)
        route_raylet_noise(log, verbose=verbose)  # twice (a resumed sweep): still one wrapper
        for line in (noise, oom):
            ray_worker.print_to_stdstream({"lines": [line], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        out = capsys.readouterr().out
        assert log.read_text() == f"(raylet) {noise}\n"
        assert oom in out and (noise in out) == verbose


def test_trial_events_pickle_after_ray_swaps_the_print_builtin(tmp_path, monkeypatch):
    """Tune pickles callbacks with its state; Ray's tqdm_ray replaces builtins.print in the driver, after which
    the original built-in no longer pickles by reference. The callback keeps no reference to it."""
    import builtins
    import pickle

    from ray.experimental import tqdm_ray

    original = tqdm_ray._print  # the built-in print, even when an earlier Ray test already swapped it
    assert getattr(original, "__module__", None) == "builtins"
    space = "sampler: {kind: grid}\nsearch_space:\n  padding: {choices: [zero, random]}\n"
    events = TrialEvents(load_spec(tiny_spec(tmp_path, "p", space)),
                         echo=original)
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: original(*args, **kwargs))
    restored = pickle.loads(pickle.dumps(events))
    assert restored.echo is None and restored.paths == events.paths


def test_a_long_phase_prints_its_middle_and_last_epoch_only(tmp_path):
    spec = load_spec(tiny_spec(tmp_path, "e", "sampler: {kind: grid}\nsearch_space:\n  padding: {choices: [zero]}\n"),
                     ["pretrain.epochs=5", "transfer.0.epochs=1"])
    lines: list[str] = []
    events = TrialEvents(spec, echo=lines.append)
    trial = SimpleNamespace(trial_id="t", config=base_trial(spec).model_dump(), last_result={})
    for epoch in range(5):
        events.on_trial_result(0, [], trial, report(0, epoch, recon_loss=1.0 - epoch / 10))
    events.on_trial_result(0, [], trial, report(1, 0, top1=40.0))
    assert [line.split(" ", 1)[1] for line in lines] == [
        "trial t pretrain epoch 3/5: recon_loss 0.8", "trial t pretrain epoch 5/5: recon_loss 0.6",
        "trial t finetune epoch 1/1: top1 40"]

"""Which failures of a trial's worker group Ray Train retries, and how often (TrialConfig.max_failures,
TrialConfig.max_restarts). Every retry restarts the workers from the latest registered checkpoint.

  loss   a worker process died: SIGKILL, the kernel's OOM killer, its node gone (spot reclaim, scale-down).
         Ray reports it as a `RayActorError` (ActorDiedError / ActorUnavailableError), inside a
         `WorkerHealthCheckFailedError` when the controller's poll found it, or as a `PreemptionError`
         after a drained node. Up to `max_restarts` per run (default 100: a spot trial of 10-20 GPU-hours
         survives every reclaim; the bound stops a worker that the OOM killer takes on every attempt).
  error  anything the trial's code raised (a bug, NonFiniteLossError, ConfigError, CUDA out of memory).
         Up to `max_failures` retries (default 1), so a crash in our code never loops.
When one rank dies, the surviving ranks usually fail as well, with collective errors (a reset gloo/NCCL
connection); so, as in Ray's own preemption rule, one dead worker makes the whole failure a loss. A real
bug that happened alongside recurs on the next attempt without a death, and is charged to `max_failures`.
Controller failures keep Ray's rules (worker-group start-up failures and time-outs retried without limit:
a trial waiting for nodes).

Ray Train V2 has no public hook for a failure policy: `ObjmaeTorchTrainer` swaps ours in where
`DataParallelTrainer.fit` hands `create_failure_policy(...)` to the controller actor.
"""
from __future__ import annotations

import logging

from ray.exceptions import RayActorError
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision
from ray.train.v2.api.exceptions import PreemptionError, TrainingFailedError, WorkerGroupError

logger = logging.getLogger(__name__)


def is_worker_death(error: BaseException | None) -> bool:
    """Whether one worker's failure is its process dying (not an exception its code raised)."""
    if isinstance(error, WorkerHealthCheckFailedError):
        error = error.health_check_failure
    return isinstance(error, RayActorError)


def is_worker_loss(error: TrainingFailedError) -> bool:
    """Whether a run failure is a loss (a preemption, or any worker died) rather than an error."""
    if isinstance(error, PreemptionError):
        return True
    return isinstance(error, WorkerGroupError) and any(map(is_worker_death, error.worker_failures.values()))


class TrialFailurePolicy(DefaultFailurePolicy):
    """Ray's default policy with worker losses counted apart: `max_restarts` losses, and the
    FailureConfig's `max_failures` for errors (see the module docstring)."""

    def __init__(self, failure_config, max_restarts: int):
        super().__init__(failure_config)
        self.max_restarts = max_restarts
        self.restarts = 0

    def make_decision(self, training_failed_error: TrainingFailedError) -> FailureDecision:
        if not is_worker_loss(training_failed_error):
            return super().make_decision(training_failed_error)
        self.restarts += 1
        decision = FailureDecision.RETRY if self.restarts <= self.max_restarts else FailureDecision.RAISE
        logger.info("[TrialFailurePolicy] %s after worker loss %d (max_restarts %d): %s", decision.value,
                    self.restarts, self.max_restarts, str(training_failed_error).splitlines()[-1])
        return decision


class ObjmaeTorchTrainer(TorchTrainer):
    """TorchTrainer whose controller uses TrialFailurePolicy (losses apart from errors)."""

    def __init__(self, *args, max_restarts: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_restarts = max_restarts

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        controller_init_kwargs["failure_policy"] = TrialFailurePolicy(self.run_config.failure_config,
                                                                      self.max_restarts)
        return super()._initialize_and_run_controller(**controller_init_kwargs)

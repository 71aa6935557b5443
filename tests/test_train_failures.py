"""The trial's failure policy (train/failures.py) on Ray Train's own error objects, without a cluster: which
failures are worker losses and which are errors, and that each kind has its own budget."""
from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.train import FailureConfig
from ray.train.v2._internal.exceptions import WorkerGroupStartupFailedError, WorkerHealthCheckFailedError
from ray.train.v2._internal.execution.failure_handling import FailureDecision
from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

from objmae_ray.train.failures import TrialFailurePolicy, is_worker_loss

RETRY, RAISE = FailureDecision.RETRY, FailureDecision.RAISE


def group_error(**failures: BaseException) -> WorkerGroupError:
    """WorkerGroupError with failures by rank: group_error(r0=..., r1=...)."""
    return WorkerGroupError("test", {int(rank[1:]): error for rank, error in failures.items()})


def died() -> WorkerHealthCheckFailedError:
    return WorkerHealthCheckFailedError("A worker health check failed.", ActorDiedError())


@pytest.mark.parametrize("error, loss", [
    (group_error(r0=died()), True),                                   # SIGKILL / node gone, found by the poll
    (group_error(r0=ActorUnavailableError("gone", None)), True),      # node unreachable
    (group_error(r0=RuntimeError("collective aborted"), r1=died()), True),  # survivors fail after a death
    (group_error(r0=ValueError("bug")), False),                       # our code raised
    (group_error(r0=ValueError("bug"), r1=ValueError("bug")), False),
    (group_error(r0=WorkerHealthCheckFailedError("cannot serialise", TypeError("pickle"))), False),
    (ControllerError(WorkerGroupStartupFailedError("no nodes")), False),
])
def test_worker_deaths_are_losses_and_raised_exceptions_are_errors(error, loss):
    assert is_worker_loss(error) is loss


def test_losses_and_errors_have_separate_budgets():
    """max_restarts 3 losses and max_failures 1 error, in any order: the 4th loss or the 2nd error raises."""
    policy = TrialFailurePolicy(FailureConfig(max_failures=1), max_restarts=3)
    assert [policy.make_decision(group_error(r0=died())) for _ in range(3)] == [RETRY] * 3
    assert policy.make_decision(group_error(r0=ValueError("bug"))) == RETRY
    assert policy.make_decision(group_error(r0=ValueError("bug"))) == RAISE
    assert policy.make_decision(group_error(r0=died())) == RAISE
    assert policy.restarts == 4


def test_no_error_retries_still_survives_losses():
    policy = TrialFailurePolicy(FailureConfig(max_failures=0), max_restarts=100)
    assert [policy.make_decision(group_error(r0=died())) for _ in range(50)] == [RETRY] * 50
    assert policy.make_decision(group_error(r0=ValueError("bug"))) == RAISE
    # a worker group that cannot start (nodes not there yet) keeps Ray's rule: retried without limit
    assert policy.make_decision(ControllerError(WorkerGroupStartupFailedError("no nodes"))) == RETRY

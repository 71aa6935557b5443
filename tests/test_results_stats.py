"""Statistics over trials (results/stats.py) on values with known answers."""
from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from objmae_ray.results.stats import finite, mean_std, pareto_front, welch_p


def test_finite_keeps_finite_numbers_only():
    assert finite(2) == 2.0 and isinstance(finite(2), float)
    assert finite("3.5") == 3.5 and finite(-0.0) == 0.0
    for bad in (None, "x", float("nan"), float("inf"), -math.inf, [1.0], {}):
        assert finite(bad) is None, bad


def test_mean_and_sample_std():
    assert mean_std([]) == (None, None)
    assert mean_std([7.5]) == (7.5, 0.0)  # one repeat: no spread
    assert mean_std([1.0, 2.0]) == (1.5, pytest.approx(math.sqrt(0.5)))
    # 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations sum to 32, sample std sqrt(32 / 7) (population: 2)
    mean, std = mean_std([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert mean == 5.0 and std == pytest.approx(math.sqrt(32 / 7), rel=1e-12)
    assert mean_std([3.0, 3.0, 3.0]) == (3.0, 0.0)
    assert mean_std([-1.0, 1.0]) == (0.0, pytest.approx(math.sqrt(2)))


@pytest.mark.parametrize("points, front", [
    ([], []),
    ([(1.0, 1.0)], [0]),
    ([(1.0, 1.0), (1.0, 1.0)], [0, 1]),  # equal points do not dominate each other
    ([(1.0, 2.0), (1.0, 1.0)], [0]),  # better in one, equal in the other: dominated
    ([(1.0, 1.0), (2.0, 1.0)], [1]),
    ([(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)], [0, 1, 2]),  # a trade-off curve: all on the front
    ([(3.0, 3.0), (1.0, 2.0), (2.0, 1.0), (0.0, 4.0)], [0, 3]),
    ([(-1.0, -1.0), (-2.0, 0.0)], [0, 1]),  # negative coordinates are maximised too
])
def test_pareto_front_maximises_both(points, front):
    assert pareto_front(points) == front


def test_welch_p_is_welchs_not_students_and_none_when_undefined():
    # a: mean 2.5, sample variance 5/3 (n 4); b: mean 10, sample variance 520/4 = 130 (n 5). Welch:
    # t = (2.5 - 10) / sqrt(v_a / 4 + v_b / 5), Welch-Satterthwaite df, two-sided p from Student's t law.
    va, vb = 5 / 3 / 4, 130 / 5
    t = (2.5 - 10) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 4)
    p = 2 * scipy_stats.t.sf(abs(t), df)
    assert p == pytest.approx(0.2161, abs=1e-4)  # Student's pooled test would give 0.2377
    assert welch_p([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 30.0]) == pytest.approx(p, rel=1e-9)
    assert welch_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert welch_p([1.0, 2.0], [3.0]) is None and welch_p([], [1.0, 2.0]) is None
    assert welch_p([1.0, 1.0], [1.0, 1.0]) is None  # no spread and no difference: 0 / 0

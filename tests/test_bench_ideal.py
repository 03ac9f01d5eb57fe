"""The benchmarks' ideal makespan: the rate bound, the in-progress bound, and the recurrence between them."""

from __future__ import annotations

import pytest

from bench.ideal import ideal_makespan


def test_a_rate_bound_run_is_its_sends_plus_one_copy():
    # 0.25/s, 2 s copies, 100 in progress: r x D = 0.5, far below C.
    assert ideal_makespan(60, 0.25, 2.0, 100) == pytest.approx(59 / 0.25 + 2.0)


def test_an_in_progress_bound_run_is_waves_of_c_copies():
    # 5/s, 60 s copies, 100 in progress: r x D = 300 > C, so 1,000 copies go in 10 waves of 60 s, the
    # first of which takes 99 / 5 s to start.
    assert ideal_makespan(1000, 5.0, 60.0, 100) == pytest.approx(9 * 60.0 + 99 / 5 + 60.0)
    assert ideal_makespan(1000, 5.0, 60.0, 100) == pytest.approx(1000 * 60.0 / 100, rel=0.05)


def test_the_bound_that_binds_is_the_larger():
    rows, rate, seconds, limit = 300, 5.0, 2.0, 100
    assert ideal_makespan(rows, rate, seconds, limit) >= max((rows - 1) / rate + seconds, rows * seconds / limit)
    assert ideal_makespan(1, 0.25, 2.0, 100) == 2.0 and ideal_makespan(0, 0.25, 2.0, 100) == 0.0
    with pytest.raises(ValueError, match="must be positive"):
        ideal_makespan(10, 0.0, 2.0, 100)

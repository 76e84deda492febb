"""Sorted runs ranked as one sequence: every rank and count equals the merged list's."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.answers.reports import percentile
from ingest.answers.runs import SortedRuns

values = st.floats(min_value=0, max_value=1e6, allow_nan=False) | st.sampled_from([0.0, 5.0])
runs = st.lists(st.lists(values, max_size=40).map(sorted), max_size=6)


@given(runs)
def test_every_rank_and_count_is_the_merged_lists(given_runs: list[list[float]]) -> None:
    merged = sorted(v for run in given_runs for v in run)
    ranked = SortedRuns(given_runs)
    assert len(ranked) == len(merged)
    assert [ranked[k] for k in range(len(merged))] == merged
    for value in {*merged, -1.0, 5.0, 2e6}:
        assert ranked.count_below(value) == bisect_left(merged, value)
        assert ranked.count_below(value, right=True) == bisect_right(merged, value)
    for p in (0, 50, 90, 95, 99, 100):
        assert percentile(ranked, p) == percentile(merged, p)


def test_out_of_range_and_negative_ranks() -> None:
    ranked = SortedRuns([[1.0, 4.0], [], [2.0, 3.0]])
    assert ranked[-1] == 4.0 and ranked[0] == 1.0 and list(ranked[1:3]) == [2.0, 3.0]
    with pytest.raises(IndexError):
        ranked[4]
    assert len(SortedRuns([])) == 0 and percentile(SortedRuns([]), 50) is None

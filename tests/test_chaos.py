"""The chaos benchmark, small: a real `autointerp label` job against the fault-injecting latency server,
killed with SIGKILL at random moments, run to its end; nothing lost, nothing stored twice, and no more
calls paid twice than were in flight at the kills."""

from __future__ import annotations

import pytest

from autointerp.bench.chaos import report, run_chaos


@pytest.mark.parametrize(
    "provider, features, kills", [("openai", 30, 3), ("anthropic", 8, 1)], ids=["openai", "anthropic"]
)
def test_killed_jobs_against_a_faulty_provider_lose_nothing_and_pay_at_most_the_calls_in_flight(
    tmp_path, provider, features, kills
):
    result = run_chaos(
        tmp_path, n_features=features, kills=kills, fault_rate=0.3, slow=0.05, concurrency=4, latency_s=0.05,
        kill_spread_s=2.0, provider=provider, rows=200_000, baseline=False,
    )
    print(report(result))
    assert result.features == features and result.kills == kills
    assert result.labeled + result.sparse == features and result.labeled > 0
    assert result.duplicates == 0 and result.lost == 0
    assert result.paid >= result.kept > 0
    assert result.paid_twice <= result.bound
    assert not result.key_leaked and result.ok

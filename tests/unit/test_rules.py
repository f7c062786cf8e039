"""Rules of ``supervisor.model.rules`` tested on their own, where a planner's test would
not show every case (the others are proven through the planners and test_invariants.py)."""

from supervisor.model.rules import limit_settled


def test_limit_settled_waits_for_the_settle_and_a_passing_health_check():
    start = "2027-01-15T08:00:00.123456789Z"
    t0 = 1_800_000_000.123456  # that StartedAt in epoch seconds
    assert not limit_settled(start, "", t0 + 59, 60.0)
    assert limit_settled(start, "", t0 + 60, 60.0)
    assert limit_settled(start, "healthy", t0 + 60, 60.0)
    assert not limit_settled(start, "starting", t0 + 3600, 60.0)  # start_period still on
    assert limit_settled(start, "unhealthy", t0 + 60, 60.0)  # judged by time alone then
    assert limit_settled(start, "", t0 + 1, 0.0)  # "0s": at once
    # no evidence of youth: an unknown start, or one the clock puts after now
    assert limit_settled("", "", t0, 60.0)
    assert limit_settled("0001-01-01T00:00:00Z", "", t0, 60.0)
    assert limit_settled(start, "", t0 - 100, 60.0)

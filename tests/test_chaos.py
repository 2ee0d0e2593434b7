"""Chaos, bounded: 2,000 events from 20 users through the tracking API to two destinations whose vendors fail
30% of calls, with `serve` SIGKILLed twice. Nothing accepted is lost, reordered or sent twice unexplained."""

from __future__ import annotations

from pathlib import Path

from chaos import Plan, run


def test_kills_and_a_failing_vendor_lose_and_reorder_nothing(tmp_path: Path) -> None:
    result = run(Plan(events=2000, users=20, kills=2, fail_rate=0.3, poison=True), tmp_path)
    report = "\n".join(result.lines())
    assert result.accepted == 2000, report
    assert len(result.kills) == 2, report
    for name in ("segmentify", "dengage"):
        assert result.lost[name] == 0, report
        assert result.delivered[name] == 2000, report
        assert result.order_violations[name] == 0, report
        assert result.unexplained[name] == 0, report
        assert sum(n for kind, n in result.vendor_calls[name].items() if kind != "200") > 0, report  # it did fail
    assert result.dead_requests == 0, report
    assert result.dead_events == 1, report  # the poison row, set aside while the others went on

"""Chaos at scale: 10,000 events from 50 users through the tracking API to two destinations whose vendors fail
30% of calls (500, 503, 429 with and without Retry-After, answers after the read timeout, dropped
connections), with `serve` SIGKILLed three times, two `destinations worker` processes mapping and delivering
beside it, and a poison event in the inbox. Prints accepted, delivered, lost, duplicates (and how many are
unexplained by a late answer or a kill), dead and order violations per destination.

The harness is tests/chaos.py, which tests/test_chaos.py runs at a smaller size in the suite.

Run: python benchmarks/chaos.py [--events N] [--users N] [--kills N] [--workers N] [--fail-rate F]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from chaos import Plan, run  # the harness lives with the tests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="`destinations worker` processes beside serve")
    parser.add_argument("--fail-rate", type=float, default=0.3)
    args = parser.parse_args()
    plan = Plan(events=args.events, users=args.users, kills=args.kills, workers=args.workers,
                fail_rate=args.fail_rate, poison=True, drain_timeout=120.0)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        result = run(plan, Path(tmp))
    print(f"{args.events} events, {args.users} users, {args.kills} kills of serve, serve + {args.workers} worker"
          f" processes mapping, vendors failing {args.fail_rate:.0%}, one poison event")  # fmt: skip
    for line in result.lines():
        print(line)
    bad = sum(result.lost.values()) + sum(result.order_violations.values()) + sum(result.unexplained.values())
    return 1 if bad or result.dead_events != 1 or result.dead_requests else 0


if __name__ == "__main__":
    sys.exit(main())

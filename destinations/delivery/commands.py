"""`destinations send` and `destinations outbox …`: the command-line face of delivery."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

from ..config import Config
from ..errors import ConfigurationError
from .intake import IntakeReport, route
from .outbox import Outbox, resolve_url
from .worker import Counters, Delivery, tune_collector

CHUNK = 500  # messages committed per transaction by `send`


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class Progress:
    """One status line on stderr: redrawn in place on a terminal, every few seconds otherwise."""

    def __init__(self, stream: TextIO | None = None, every: float = 5.0) -> None:
        self.stream = stream or sys.stderr  # the stderr of now, not of when this module was imported
        self.tty = self.stream.isatty()
        self.every = 0.2 if self.tty else every
        self.last = 0.0

    def show(self, accepted: int, counters: Counters, pending: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        delivered, dead = sum(counters.delivered.values()), sum(counters.dead.values())
        done = accepted - pending
        width = 24
        filled = int(width * done / accepted) if accepted else width
        bar = "#" * filled + "-" * (width - filled)
        line = (
            f"[{bar}] accepted {accepted} | delivered {delivered} | pending {pending} | dead {dead}"
            if accepted
            else "nothing to deliver"
        )
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")


def deliver_until_drained(config: Config, outbox: Outbox, accepted: int, *, quiet: bool = False) -> Counters:
    """Run the workers until no request of the configured instances is pending."""
    tune_collector()  # this process delivers now
    delivery = Delivery(str(config.outbox.path), config.destinations, config.outbox,
                        debug_keep=config.debugger.keep_count)  # fmt: skip
    progress = Progress()
    delivery.start()
    try:
        accepted = max(accepted, _pending(outbox, config))
        while (pending := _pending(outbox, config)) > 0:
            if not quiet:
                progress.show(accepted, delivery.counters, pending)
            time.sleep(0.1)
        if not quiet:
            progress.show(accepted, delivery.counters, 0, force=True)
            progress.end()
    finally:
        delivery.stop()
    return delivery.counters


def _pending(outbox: Outbox, config: Config) -> int:
    """Requests of the configured instances still pending, and events not yet mapped."""
    return sum(outbox.pending_count(name) for name in config.destinations) + outbox.inbox_count()


def summary_table(config: Config, report: IntakeReport | None, counters: Counters | None) -> str:
    header = ["destination", "accepted", "filtered", "invalid", "delivered", "retried", "dead"]
    rows = [header]
    rows.extend(
        [
            name,
            str(report.accepted[name]) if report else "-",
            str(report.filtered[name]) if report else "-",
            str(report.invalid[name]) if report else "-",
            str(counters.delivered[name]) if counters else "-",
            str(counters.retried[name]) if counters else "-",
            str(counters.dead[name]) if counters else "-",
        ]
        for name in config.destinations
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in rows)  # fmt: skip


def cmd_send(config: Config, messages: Iterable[Any], *, wait: bool, quiet: bool = False) -> int:
    outbox = Outbox.configured(config.outbox, debug_keep=config.debugger.keep_count)
    report = IntakeReport()
    for chunk in _chunks(messages, CHUNK):
        part = route(chunk, config.destinations, outbox)
        report.messages += part.messages
        report.accepted.update(part.accepted)
        report.filtered.update(part.filtered)
        report.invalid.update(part.invalid)
        report.duplicates += part.duplicates
        report.dead_events += part.dead_events
        report.errors.extend(part.errors[: max(0, 20 - len(report.errors))])
    outbox.prune()
    print(
        f"{report.messages} messages: {sum(report.accepted.values())} requests committed to {config.outbox.path}"
        f" ({report.duplicates} already there)",
        file=sys.stderr,
    )
    if report.dead_events:
        print(f"{report.dead_events} message(s) could not be stored at all", file=sys.stderr)
    for mid, name, reason in report.errors:
        print(f"  invalid for {name}: {mid}: {reason}", file=sys.stderr)
    counters = deliver_until_drained(config, outbox, sum(report.accepted.values()), quiet=quiet) if wait else None
    print(summary_table(config, report, counters))
    failed = sum(report.invalid.values()) + report.dead_events + (sum(counters.dead.values()) if counters else 0)
    return 1 if failed else 0


def _print_json(value: dict[str, Any]) -> None:
    """One JSON line on stdout, readable text where the terminal takes it; a lone surrogate (which a stored
    messageId may hold) as its escape rather than a crash."""
    line = json.dumps(value, ensure_ascii=False)
    try:
        line.encode(sys.stdout.encoding or "utf-8")
    except UnicodeEncodeError:
        line = json.dumps(value)
    print(line)


def _no_instance(config: Config, destination: str, stored: list[str]) -> None:
    """ConfigurationError for `--destination` naming neither an instance of the file nor one with rows stored."""
    known = ", ".join(sorted([*config.destinations, *config.unconfigured])) or "none"
    also = f"; in the outbox only: {', '.join(stored)}" if stored else ""
    raise ConfigurationError(f"{config.source}: no destination instance {destination!r} (configured: {known}{also})")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _not_replayable(outbox: Outbox, destination: str | None, ids: list[int], events: Sequence[int]) -> list[str]:
    """Each id given to `replay --id/--event` that names nothing dead (of `destination`, when given), with what it
    names instead."""
    out = []
    states = outbox.request_states(ids)
    for rid in sorted(set(ids)):
        state, instance = states.get(rid, (None, None))
        if state is None:
            out.append(f"request {rid}: no such request (delivered and forgotten, or never stored)")
        elif state != "dead":
            out.append(f"request {rid}: {state}, not dead")
        elif destination is not None and instance != destination:
            out.append(f"request {rid}: a dead request of {instance}, not of {destination}")
    dead = outbox.inbox_states(list(events))
    for rid in sorted(set(events)):
        if rid not in dead:
            out.append(f"inbox event {rid}: not in the inbox (mapped already, or never accepted)")
        elif not dead[rid]:
            out.append(f"inbox event {rid}: waiting to be mapped, not dead")
        elif destination is not None:  # mapped again, it goes to every instance that takes it
            out.append(f"inbox event {rid}: dead, but an inbox event is no instance's: replay it without --destination")
    return out


def cmd_outbox(
    config: Config, action: str, *, destination: str | None, limit: int, ids: list[int], events: Sequence[int] = ()
) -> int:
    """`outbox stats|dead|replay|drain`; 2 when `replay --id/--event` names nothing dead. ConfigurationError when
    `destination` is neither an instance of the configuration nor one the outbox has rows of."""
    defined = {*config.destinations, *config.unconfigured}
    if destination is not None and destination not in defined and not Path(config.outbox.path).exists():
        _no_instance(config, destination, [])  # no outbox to read: none made for a mistyped name
    outbox = Outbox.configured(config.outbox, debug_keep=config.debugger.keep_count)
    if destination is not None and destination not in defined:
        stored = sorted(set(outbox.stats()) - defined)
        if destination not in stored:  # an instance since taken out of the file still has its rows to read
            _no_instance(config, destination, stored)
        if action == "replay":
            print(f"{destination} is not defined in {config.source}: its requests wait for a configuration that"
                  " defines it", file=sys.stderr)  # fmt: skip
    if action == "stats":
        stats = outbox.stats()
        print(f"{'destination':<24} {'pending':>8} {'retrying':>8} {'delivered':>9} {'dead':>6} {'oldest pending':>15}")
        for name in sorted(set(stats) | set(config.destinations) | set(config.unconfigured)):
            s = stats.get(name, {"pending": 0, "retrying": 0, "delivered": 0, "dead": 0, "oldest_pending_age": 0})
            age = f"{s['oldest_pending_age']:.0f}s" if s["pending"] else "-"
            print(f"{name:<24} {s['pending']:>8} {s['retrying']:>8} {s['delivered']:>9} {s['dead']:>6} {age:>15}")
        inbox = outbox.inbox_count()
        if inbox:
            print(f"{inbox} accepted event(s) in the inbox, not yet mapped: a delivery process maps them")
        dead_events = outbox.dead_event_count()
        if dead_events:
            print(f"{dead_events} accepted event(s) set aside, not mappable: `destinations outbox dead` lists them")
        return 0
    if action == "dead":
        events = [] if destination or ids else outbox.dead_events(limit)
        for event in events:
            _print_json({"inboxEvent": event["id"], "messageId": event["message_id"], "reason": event["reason"],
                         "received": _when(event["received_at"]), "died": _when(event["dead_at"])})  # fmt: skip
        rows = outbox.dead_rows(destination, limit)
        for row in rows:
            instance = config.destinations.get(row["destination"])
            _print_json({
                "id": row["id"], "destination": row["destination"], "messageId": row["message_id"],
                "request": row["index"],
                "url": resolve_url(row["url"], instance.base_url) if instance else row["url"],
                "attempts": row["attempts"], "lastStatus": row["last_status"], "lastError": row["last_error"],
                "created": _when(row["created_at"]), "died": _when(row["finished_at"]),
            })  # fmt: skip
        shown = f"{len(events)} dead inbox event(s) and " if events else ""
        print(f"{shown}{len(rows)} dead request(s) shown", file=sys.stderr)
        return 0
    if action == "replay":
        left = _not_replayable(outbox, destination, ids, events)  # read first: what the replay leaves as it is
        n = 0 if events else outbox.replay(destination, ids or None)
        again = 0 if destination or ids else outbox.replay_events(list(events) or None)
        if left:
            print(f"{n + again} replayed; left as they are: {'; '.join(left)} (`destinations outbox dead` lists"
                  " what is dead)", file=sys.stderr)  # fmt: skip
            return 2
        if not n and not again:
            print("nothing dead to replay")
            return 0
        print(
            f"{n} dead request(s) back in the outbox and {again} inbox event(s) back to be mapped; run"
            " `destinations outbox drain` or a worker to deliver them (requests go to the instance's URL as"
            " configured now)"
        )
        return 0
    if action == "drain":
        counters = deliver_until_drained(config, outbox, outbox.pending_count())
        print(summary_table(config, None, counters))
        # Rows of instances this file does not define are delivered by none of its processes: not drained.
        left = {name: n for name, n in outbox.pending_by_destination().items() if name not in config.destinations}
        if left:
            names = ", ".join(f"{name} ({n})" for name, n in sorted(left.items()))
            print(f"{sum(left.values())} request(s) wait for instances {config.source} does not define: {names};"
                  " a configuration that defines them delivers them", file=sys.stderr)  # fmt: skip
            return 1
        return 1 if sum(counters.dead.values()) else 0
    raise ValueError(action)

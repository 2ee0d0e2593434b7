"""Delivery workers: one loop and one small thread pool per destination instance.

Each instance has its own session, its own threads and its own pause after a 429, so a slow,
failing or rate-limited instance never delays another.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from ..base import Destination
from ..config import OutboxConfig
from ..redaction import masked_traceback
from .intake import IntakeReport, map_inbox
from .outbox import Holder, LeaseLost, Outbox, Row, resolve_url
from .sender import Outcome, Sender, merge_bodies

log = logging.getLogger("destinations.delivery")


@dataclass
class Counters:
    """What the workers did since start, per instance (for progress, summaries and metrics)."""

    delivered: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, name: str, n: int) -> None:
        with self.lock:
            getattr(self, kind)[name] += n


class InstanceWorker(threading.Thread):
    """Claims due batches of one instance and keeps up to `concurrency` of them in flight."""

    def __init__(
        self,
        name: str,
        destination: Destination,
        outbox: Outbox,
        config: OutboxConfig,
        counters: Counters,
        *,
        observe: Callable[[str, Outcome, float], None] | None = None,
    ) -> None:
        super().__init__(name=f"deliver-{name}", daemon=True)
        self.instance = name
        self.destination = destination
        self.outbox = outbox
        self.config = config
        self.counters = counters
        self.observe = observe
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.paused_until = 0.0
        self.throttled = 0  # 429s in a row: the pause without Retry-After grows with them
        self.sender = Sender(
            destination,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            pool_size=config.concurrency,
            max_retry_after=config.max_retry_after,
        )

    def run(self) -> None:
        cfg = self.config
        inflight: set[Future[None]] = set()
        with ThreadPoolExecutor(cfg.concurrency, thread_name_prefix=f"send-{self.instance}") as pool:
            while not self.stopping.is_set():
                if inflight:
                    try:
                        self.outbox.renew_packs()  # a slow vendor never lets a pack's lease end while it is sent
                    except Exception:
                        log.exception("%s: renewing the leases of packs out failed; trying again", self.instance)
                free = cfg.concurrency - len(inflight)
                if free > 0 and time.time() >= self.paused_until:
                    try:
                        batches = self.outbox.claim(
                            self.instance,
                            max_batches=free,
                            batch_size=cfg.batch_size,
                            batch_bytes=cfg.batch_bytes,
                            lease=cfg.lease_seconds,
                        )
                    except Exception:
                        log.exception("%s: claiming from the outbox failed; trying again", self.instance)
                        batches = []
                        self.stopping.wait(1.0)
                    inflight.update(pool.submit(self._deliver, batch) for batch in batches)
                if inflight:
                    inflight = set(wait(inflight, timeout=0.25, return_when=FIRST_COMPLETED).not_done)
                    continue
                self._idle()
            wait(inflight)  # a graceful stop finishes what is in flight; the rest stays in the outbox
        self.sender.close()
        self.outbox.close()

    def _idle(self) -> None:
        """Sleep until new work is announced, the next retry is due, or a short poll elapses."""
        timeout = 0.5
        if self.paused_until > time.time():
            timeout = min(timeout, self.paused_until - time.time())
        else:
            due = self.outbox.next_due(self.instance)
            if due is not None:
                timeout = min(timeout, max(due - time.time(), 0.01))
        self.wake.wait(timeout)
        self.wake.clear()

    def _deliver(self, batch: list[Row]) -> None:
        if not self.outbox.current(batch):
            return  # its pack passed to another claim while it waited: that claim sends it
        if self.stopping.is_set() or time.time() < self.paused_until:
            # A pack's batches wait in the pool: after a 429 the whole instance waits, and a stop sends no
            # more. Given back unsent, they go again as rows once the pause is over (or by the next process).
            self.outbox.release(batch)
            return
        started = time.monotonic()
        first = batch[0]
        try:
            data = merge_bodies([row.body for row in batch], first.batchable)
            # Stored as a path: the instance's base URL is today's, so a URL fixed in the settings applies on replay.
            url = resolve_url(first.url, self.destination.base_url)
            outcome = self.sender.send_raw(first.method, url, first.params, first.headers, data)
        except Exception as exc:  # it promises an outcome; one it did not give is a retry, with its backoff
            log.error("%s: sending a batch of %d ended without an outcome; it goes again as a retry\n%s",
                      self.instance, len(batch), masked_traceback(exc, self.destination.secrets()))  # fmt: skip
            # Recorded, not left to a lease: a pack's lease is renewed while its process sends, so a batch
            # without an outcome would hold its pack, and its users, for as long as this process runs.
            outcome = Outcome("retry", "no outcome", type(exc).__name__)
        if self.observe:
            try:  # the metrics: a fault there must not keep the outcome from being recorded
                self.observe(self.instance, outcome, time.monotonic() - started)
            except Exception:
                log.exception("%s: the metrics could not note an outcome", self.instance)
        try:
            self._record(batch, outcome)
        except Exception:  # the lease will give these rows back; nothing is lost
            log.exception("%s: recording an outcome failed; the rows return after their lease", self.instance)

    def _record(self, batch: list[Row], outcome: Outcome) -> None:
        cfg, n = self.config, len(batch)
        self.counters.add("attempts", self.instance, n)
        if outcome.kind == "delivered":
            self.throttled = 0
            self.counters.add("delivered", self.instance, self.outbox.delivered(batch, outcome.status))
        elif outcome.kind == "retry":
            if outcome.status == "429":
                # The whole instance waits, not only this batch: more users waiting must not mean more load.
                # Without Retry-After the wait grows while 429s go on (backoff_base doubling, up to backoff_cap).
                self.throttled += 1
                wait = outcome.retry_after
                if wait is None:
                    wait = min(cfg.backoff_cap, cfg.backoff_base * 2 ** min(self.throttled - 1, 30))
                self.paused_until = max(self.paused_until, time.time() + wait)
            rescheduled, died = self.outbox.retry(
                batch,
                outcome.status,
                outcome.detail,
                delay=outcome.retry_after,
                retry_window=cfg.retry_window,
                min_attempts=cfg.min_attempts,
                backoff_base=cfg.backoff_base,
                backoff_cap=cfg.backoff_cap,
            )
            self.counters.add("retried", self.instance, rescheduled)
            self.counters.add("dead", self.instance, died)
        elif outcome.kind == "permanent" and outcome.split and n > 1:
            log.warning("%s: a batch of %d was refused (%s); sending its events one by one", self.instance, n,
                        outcome.status)  # fmt: skip
            self.outbox.split(batch, outcome.status, outcome.detail)
            self.wake.set()
        else:
            if outcome.kind == "config":
                log.error(
                    "%s: the vendor refused the account (%s): every event to it will fail until its settings"
                    " change; dead requests can be replayed with `destinations outbox replay`",
                    self.instance,
                    outcome.status,
                )
            self.counters.add("dead", self.instance, self.outbox.dead(batch, outcome.status, outcome.detail))


class Mapper(threading.Thread):
    """Maps the events the server accepted into the inbox into vendor requests, then wakes the workers.

    Any number of processes may run one: the mapper lease lets one map at a time (outbox.py), so
    requests are stored in the order their events arrived; the others wait, ready to take over."""

    def __init__(
        self,
        outbox: Outbox,
        destinations: Mapping[str, Destination],
        wake_workers: Callable[[list[str]], None],
        on_mapped: Callable[[IntakeReport], None] | None = None,
        *,
        lease: float = 60.0,
    ) -> None:
        super().__init__(name="map-inbox", daemon=True)
        self.outbox = outbox
        self.destinations = destinations
        self.wake_workers = wake_workers
        self.on_mapped = on_mapped
        self.lease = lease
        self.holder = Holder.new()
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                report = map_inbox(self.outbox, self.destinations, self.holder, lease=self.lease)
            except LeaseLost:
                log.info("another process took the mapper lease; this one waits")
                continue
            except Exception:  # nothing was committed: the events are still in the inbox
                log.exception("mapping accepted events failed; trying again")
                self.stopping.wait(1.0)
                continue
            if report.messages:
                for mid, name, reason in report.errors:
                    log.info("%s will not get %s: %s", name, mid, reason, extra={"destination": name, "messageId": mid})
                if self.on_mapped:
                    self.on_mapped(report)
                self.wake_workers([name for name, n in report.accepted.items() if n])
                continue
            self.wake.wait(0.5)
            self.wake.clear()
        try:
            self.outbox.release_mapper(self.holder)
        except Exception:  # the lease then ends on its own
            log.exception("giving up the mapper lease failed")
        self.outbox.close()


# Young objects between collections of the cycle collector (CPython's default is 700).
YOUNG_THRESHOLD = 50_000


def tune_collector() -> None:
    """Set the cycle collector for a delivery process: mapping makes hundreds of thousands of short-lived
    objects a second, nearly none in cycles, so collecting every 700 allocations, and walking the whole
    start-up heap at each full collection, cost about a fifth of mapping time (benchmarks/mapping.py). What
    exists at start moves to the permanent generation, and young collections run less often; cycles are
    still collected, a little later. Idempotent; affects the whole process, so the commands that are delivery
    processes call it (`serve`, `worker`, `send`, `outbox drain`), never the library."""
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)


class Delivery:
    """All instance workers over one outbox, and the mapper of its inbox."""

    def __init__(
        self,
        outbox_path: str,
        destinations: Mapping[str, Destination],
        config: OutboxConfig,
        observe: Callable[[str, Outcome, float], None] | None = None,
        on_mapped: Callable[[IntakeReport], None] | None = None,
        *,
        debug_keep: int = 0,
    ) -> None:
        """`debug_keep`: messages the live debugger keeps (0: none; `[debugger]` of the configuration)."""
        self.counters = Counters()
        self.workers = {
            name: InstanceWorker(
                name,
                dest,
                Outbox.configured(config, debug_keep=debug_keep, path=outbox_path),
                config,
                self.counters,
                observe=observe,
            )
            for name, dest in destinations.items()
        }
        mapping = Outbox.configured(config, debug_keep=debug_keep, path=outbox_path)
        self.mapper = Mapper(mapping, destinations, self._wake_workers, on_mapped, lease=config.lease_seconds)

    def start(self) -> None:
        self.mapper.start()
        for w in self.workers.values():
            w.start()

    def _wake_workers(self, names: list[str]) -> None:
        for name in names:
            worker = self.workers.get(name)
            if worker:
                worker.wake.set()

    def inbox_changed(self) -> None:
        """Events were committed to the inbox: wake the mapper."""
        self.mapper.wake.set()

    def notify(self, names: list[str] | None = None) -> None:
        """New events or requests were committed: wake the mapper and these instances' workers (all by default)."""
        self.mapper.wake.set()
        self._wake_workers(names or list(self.workers))

    def stop(self, timeout: float = 30.0) -> None:
        self.mapper.stopping.set()
        self.mapper.wake.set()
        for w in self.workers.values():
            w.stopping.set()
            w.wake.set()
        deadline = time.time() + timeout
        self.mapper.join(max(deadline - time.time(), 0.1))
        for w in self.workers.values():
            w.join(max(deadline - time.time(), 0.1))

"""The server half of `destinations demo`: a live server, a recording vendor and analytics-python."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import uvicorn

from ..config import parse_config
from ..delivery import Outbox
from ..demo import DEMO_SETTINGS, event_name, shop_session
from ..redaction import mask_headers, mask_params
from ..sink import RecordingServer
from .app import create_app

WRITE_KEY = "demo-write-key"
VENDORS = {"segmentify": "segmentify", "dengage": "dengage", "wigzo": "wigzo", "esputnik": "esputnik"}


def _settings(kind: str, vendor_url: str) -> dict[str, Any]:
    """The embedded example settings, with the vendor URL pointed at the local recording server."""
    url_key = "dataCenterUrl" if kind in ("segmentify", "dengage") else "baseUrl"
    return {"type": kind, **DEMO_SETTINGS[kind], url_key: f"{vendor_url}/{kind}"}


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a thread: the main thread keeps Ctrl-C
        return


def start_server(app: Any) -> tuple[_Server, threading.Thread, str]:
    """uvicorn on a free loopback port, in a thread; returns once it listens."""
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="demo-server", daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not (server.started and server.servers) and time.time() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("the demo server did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def send_session(host: str, users: int) -> int:
    """Drive the shop session through analytics-python (batch mode, gzip), as a shop's backend would."""
    import analytics

    errors: list[str] = []
    client = analytics.Client(
        WRITE_KEY, host=host, gzip=True, on_error=lambda e, _: errors.append(str(e)), max_retries=3, upload_size=50
    )
    sent = 0
    for user in range(1, users + 1):
        for m in shop_session(user):
            common = {
                "user_id": m["userId"],
                "anonymous_id": m["anonymousId"],
                "context": m["context"],
                "timestamp": datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00")),
                "message_id": m["messageId"],
            }
            if m["type"] == "identify":
                client.identify(traits=m["traits"], **common)
            elif m["type"] == "page":
                client.page(name=m.get("name"), properties=m.get("properties"), **common)
            else:
                client.track(event=m["event"], properties=m.get("properties"), **common)
            sent += 1
    client.flush()
    client.join()
    if errors:
        raise RuntimeError(f"analytics-python reported: {errors[0]}")
    return sent


def run_server_demo(users: int = 3, out_dir: Path | None = None, *, keep_open: bool = False) -> int:
    """The session through a live server to the vendors' stand-in; prints what each vendor received and the live
    debugger's URL. `keep_open`: then keep serving (the debugger too) until Ctrl-C."""
    logging.getLogger("analytics").setLevel(logging.CRITICAL)  # its retries would print tracebacks
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="destinations-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with RecordingServer() as vendor:
        config = parse_config(
            {
                "server": {"write_keys": [WRITE_KEY]},
                "outbox": {"path": str(out_dir / "outbox.sqlite3"), "backoff_base": 0.05, "backoff_cap": 1},
                "destinations": {name: _settings(kind, vendor.url) for name, kind in VENDORS.items()},
            },
            source="(demo defaults)",
            environ={},
        )
        server, thread, url = start_server(create_app(config))
        try:
            print(f"Server {url} (outbox {config.outbox.path}); vendors stand-in {vendor.url}")
            print(f"Live debugger: {url}/debugger", flush=True)
            sent = send_session(url, users)
            print(f"analytics-python sent {sent} messages for {users} users (identify, pages, products, cart, checkout,"
                  " order, a custom event)\n")  # fmt: skip
            outbox = Outbox(config.outbox.path)
            deadline = time.time() + 60
            while (outbox.pending_count() or not outbox.stats()) and time.time() < deadline:
                time.sleep(0.05)
            status = _report(config, vendor.url, vendor.delivered(), outbox.stats(), out_dir)
            if keep_open:
                print(f"\nStill serving: open {url}/debugger to look at the session. Ctrl-C stops.", flush=True)
                try:
                    threading.Event().wait()
                except KeyboardInterrupt:
                    print()
            return status
        finally:
            server.should_exit = True
            thread.join(15)


def _report(config: Any, vendor_url: str, received: list[Any], stats: dict[str, Any], out_dir: Path) -> int:
    """Write requests.jsonl and print what each vendor received; 0 when all was delivered."""
    path = out_dir / "requests.jsonl"
    by_vendor: dict[str, Counter[str]] = {name: Counter() for name in VENDORS}
    with path.open("w", encoding="utf-8") as out:
        for r in received:
            name = r.path.strip("/").split("/", 1)[0]
            body = r.json
            # Masked as the logs mask them: the file is for reading and sharing, with no credential in it.
            params, headers = config.destinations[name].credential_names()
            data = {
                "method": r.method,
                "url": f"{vendor_url}{r.path}",
                "params": mask_params(r.params, params),
                "headers": mask_headers(r.headers, headers),
                "json": body,
            }
            events = body if isinstance(body, list) else [body]
            for event in events:
                by_vendor.setdefault(name, Counter())[event_name({**data, "json": event})] += 1
            out.write(json.dumps({"destination": name, **data}, ensure_ascii=False) + "\n")
    for name, counts in by_vendor.items():
        s = stats.get(name, {})
        outbox_line = f"{s.get('delivered', 0)} delivered, {s.get('dead', 0)} dead, {s.get('pending', 0)} pending"
        print(f"{name}: {sum(counts.values())} events received by the vendor (outbox: {outbox_line})")
        for label, count in sorted(counts.items()):
            print(f"    {count:>3}  {label}")
        print()
    print(f"Every request the vendors received: {path}", flush=True)
    pending = sum(s.get("pending", 0) for s in stats.values())
    return 0 if received and not pending else 1

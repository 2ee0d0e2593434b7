"""`destinations demo`, README's first command, run as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from destinations.demo import DEMO_SETTINGS
from destinations.registry import get_destination

SCRIPT = shutil.which("destinations", path=str(Path(sys.executable).parent)) or "destinations"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The demo for two users, run once: (what it printed, its request log)."""
    out = tmp_path_factory.mktemp("demo")
    res = subprocess.run(
        [SCRIPT, "demo", "--users", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout, out / "requests.jsonl"


def test_demo_delivers_a_shop_session_to_every_vendor(demo: tuple[str, Path]) -> None:
    stdout, log = demo
    for name in ("segmentify", "dengage", "wigzo", "esputnik"):
        assert f"{name}: 20 events received by the vendor (outbox: " in stdout
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    per_vendor = Counter(line["destination"] for line in lines)
    assert set(per_vendor) == {"segmentify", "dengage", "wigzo", "esputnik"}

    seg = [e for line in lines if line["destination"] == "segmentify" for e in line["json"]]
    purchases = [e for e in seg if e["name"] == "CHECKOUT" and e["step"] == "purchase"]
    assert sorted(p["orderNo"] for p in purchases) == ["ord-1", "ord-2"]
    assert {p["totalPrice"] for p in purchases} == {949.97}
    assert all(e["device"] == "IOS" for e in seg)  # from the session's iPhone user agent

    wigzo = [line for line in lines if line["destination"] == "wigzo"]
    orders = [w["json"] for w in wigzo if w["json"].get("eventName") == "order_completed"]
    assert {o["eventval"]["orderId"] for o in orders} == {"ord-1", "ord-2"}
    assert all(w["params"]["org_token"] == "***" for w in wigzo)

    esp = [line["json"] for line in lines if line["destination"] == "esputnik"]
    keys = Counter(body.get("eventTypeKey", "contact") for body in esp)
    assert keys["productViewed"] == 2
    assert keys["cartUpdated"] == 8


def test_demo_request_log_has_each_requests_headers_and_no_credential(demo: tuple[str, Path]) -> None:
    _, log = demo
    text = log.read_text()
    lines: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines()]
    assert lines
    for line in lines:
        assert line["headers"]["Content-Type"] == "application/json", line["headers"]
    esputnik = [line for line in lines if line["destination"] == "esputnik"]
    assert esputnik
    assert all(line["headers"]["Authorization"] == "***" for line in esputnik)  # Basic, from the API key
    for name, settings in DEMO_SETTINGS.items():
        params, headers = get_destination(name, settings).credentials()
        secrets = {*params.values(), *headers.values(), *(v.split(" ", 1)[-1] for v in headers.values())}
        secrets |= {v for k, v in settings.items() if k.lower().endswith(("key", "token"))}
        for secret in secrets:
            assert secret not in text, (name, secret)


def test_offline_demo_maps_without_sockets(tmp_path: Path) -> None:
    res = subprocess.run(
        [SCRIPT, "demo", "--offline", "--users", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0
    assert "segmentify (Segmentify): 10 requests" in res.stdout
    assert (tmp_path / "requests.jsonl").exists()


def test_demo_keep_open_serves_its_debugger_until_ctrl_c(tmp_path: Path) -> None:
    """`demo --keep-open` prints the debugger's URL, and the page's API shows the session until Ctrl-C."""
    import signal
    import time

    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "destinations", "demo", "--users", "1", "--keep-open", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline() if process.stdout else ""
            if not line:
                break
            lines.append(line)
            if line.startswith("Still serving"):
                break
        debugger = next(line.split(": ", 1)[1].strip() for line in lines if line.startswith("Live debugger: "))
        assert debugger.endswith("/debugger")
        messages = httpx.get(f"{debugger}/api/messages").json()["messages"]
        assert len(messages) >= 10  # the session: identify, pages, products, cart, checkout, order, a custom event
        assert all(b["status"] in ("delivered", "filtered", "invalid") for m in messages
                   for b in m["destinations"].values())  # fmt: skip
        assert httpx.get(debugger).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err

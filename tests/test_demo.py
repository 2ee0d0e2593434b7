"""`destinations demo`, README's first command, run as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

SCRIPT = shutil.which("destinations", path=str(Path(sys.executable).parent)) or "destinations"


def test_demo_delivers_a_shop_session_to_every_vendor(tmp_path: Path) -> None:
    res = subprocess.run(
        [SCRIPT, "demo", "--users", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("segmentify", "dengage", "wigzo", "esputnik"):
        assert f"{name}: 20 events received by the vendor (outbox: " in res.stdout
    lines = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
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
    assert all(w["params"]["org_token"] == "demo-org-token" for w in wigzo)

    esp = [line["json"] for line in lines if line["destination"] == "esputnik"]
    keys = Counter(body.get("eventTypeKey", "contact") for body in esp)
    assert keys["productViewed"] == 2
    assert keys["cartUpdated"] == 8


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

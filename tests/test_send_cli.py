"""`destinations send` and `destinations outbox …` as a user runs them: real subprocesses, a real
SQLite outbox and a real local vendor server; includes the SIGKILL crash test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from disk import on_disk

from destinations.delivery import Outbox
from destinations.sink import Answer, Received, RecordingServer

SCRIPT = shutil.which("destinations", path=str(Path(sys.executable).parent)) or "destinations"
SECRET = "sk-send-9f8e7d6c5b4a"
TOKEN = "wz-token-1122334455"


def write_config(tmp_path: Path, segmentify_url: str, wigzo_url: str, **outbox: object) -> Path:
    table = {"path": str(tmp_path / "outbox.sqlite3"), "backoff_base": 0.01, "backoff_cap": 0.05, "retry_window": 0,
             "min_attempts": 2, "read_timeout": 5, **outbox}  # fmt: skip
    lines = ["[outbox]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    lines += [
        "[destinations.shop-segmentify]",
        'type = "segmentify"',
        'apiKey = "${SEG_KEY}"',
        f'dataCenterUrl = "{segmentify_url}"',
        "[destinations.shop-wigzo]",
        'type = "wigzo"',
        'orgToken = "${WIGZO_ORG}"',
        'token = "${WIGZO_TOKEN}"',
        f'baseUrl = "{wigzo_url}"',
    ]
    path = tmp_path / "destinations.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def env() -> dict[str, str]:
    return {**os.environ, "SEG_KEY": SECRET, "WIGZO_ORG": SECRET, "WIGZO_TOKEN": TOKEN}


def run(*args: str, stdin: str = "", environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args],
        check=False,
        input=stdin,
        capture_output=True,
        text=True,
        env=environ if environ is not None else env(),
        timeout=120,
    )


def events(n: int, users: int = 10) -> list[dict]:
    return [
        {
            "type": "track",
            "event": "Product Added",
            "messageId": f"m{i}",
            "userId": f"user{i % users}",
            "context": {"sessionId": "s", "page": {"url": "https://shop.example/p"}},
            "properties": {"product_id": f"P{i}", "price": 5},
        }
        for i in range(n)
    ]


def product_ids(received: list[Received]) -> list[str]:
    out = []
    for r in received:
        body = r.json
        if isinstance(body, list):  # Segmentify
            out += [e["productId"] for e in body]
        else:  # Wigzo
            out.append(body["eventval"]["productId"])
    return out


def test_send_delivers_everything_and_prints_a_summary(tmp_path: Path) -> None:
    with RecordingServer() as seg, RecordingServer() as wz:
        config = write_config(tmp_path, seg.url, wz.url)
        stdin = "\n".join(json.dumps(e) for e in [*events(30), {"type": "track", "event": "x"}])
        res = run("send", "--config", str(config), stdin=stdin)
        assert sorted(product_ids(seg.delivered())) == sorted(f"P{i}" for i in range(30))
        assert sorted(product_ids(wz.delivered())) == sorted(f"P{i}" for i in range(30))
        assert seg.received[0].params == {"apiKey": SECRET}
        assert wz.received[0].params == {"token": TOKEN, "org_token": SECRET}
    assert res.returncode == 1  # one message had no userId/anonymousId
    table = res.stdout.splitlines()
    assert table[0].split() == ["destination", "accepted", "filtered", "invalid", "delivered", "retried", "dead"]
    assert table[1].split() == ["shop-segmentify", "30", "0", "1", "30", "0", "0"]
    assert table[2].split() == ["shop-wigzo", "30", "0", "1", "30", "0", "0"]
    assert "userId or anonymousId is required" in res.stderr
    assert SECRET not in res.stdout + res.stderr
    assert TOKEN not in res.stdout + res.stderr

    # The same file again: nothing new to deliver (dedupe by messageId).
    again = run("send", "--config", str(config), stdin="\n".join(json.dumps(e) for e in events(30)))
    assert again.returncode == 0
    assert "(60 already there)" in again.stderr


def test_outbox_commands_list_and_replay_dead_requests_without_secrets(tmp_path: Path) -> None:
    def refuse(_: Received) -> Answer:
        return Answer(400, {"error": f"invalid apiKey {SECRET}"})

    with RecordingServer(refuse) as seg, RecordingServer() as wz:
        config = write_config(tmp_path, seg.url, wz.url)
        res = run("send", "--config", str(config), stdin="\n".join(json.dumps(e) for e in events(3)))
        assert res.returncode == 1
        stats = run("outbox", "stats", "--config", str(config))
        assert stats.returncode == 0
        rows = {line.split()[0]: line.split()[1:] for line in stats.stdout.splitlines()[1:]}
        assert rows["shop-segmentify"][:4] == ["0", "0", "0", "3"]
        assert rows["shop-wigzo"][:4] == ["0", "0", "3", "0"]

        dead = run("outbox", "dead", "--config", str(config), "--destination", "shop-segmentify", "--limit", "2")
        listed = [json.loads(line) for line in dead.stdout.splitlines()]
        assert len(listed) == 2
        assert listed[0]["lastStatus"] == "400"
        assert listed[0]["lastError"] == '{"error": "invalid apiKey ***"}'
        assert listed[0]["attempts"] == 2  # once in the merged batch (400: split), once alone

        # Where the instances cannot all be made (an operator's shell without Wigzo's keys; an instance whose URL
        # is refused, its key set): the rows are read and changed all the same, each such instance named on stderr
        # with why, never with its key; only `drain`, which sends, needs them all.
        broken = tmp_path / "broken.toml"
        broken.write_text(config.read_text() + '[destinations.shop-broken]\ntype = "segmentify"\n'
                          'apiKey = "${SEG_KEY}"\ndataCenterUrl = "dce1.segmentify.com"\n')  # fmt: skip
        bare = {k: v for k, v in env().items() if k not in ("WIGZO_ORG", "WIGZO_TOKEN")}
        keyless = run("outbox", "stats", "--config", str(broken), environ=bare)
        assert keyless.returncode == 0, keyless.stderr
        listed = {line.split()[0]: line.split()[1:5] for line in keyless.stdout.splitlines()[1:]}
        assert listed == {"shop-broken": ["0", "0", "0", "0"], "shop-segmentify": ["0", "0", "0", "3"],
                          "shop-wigzo": ["0", "0", "3", "0"]}  # fmt: skip
        assert "[destinations.shop-wigzo] orgToken: environment variable WIGZO_ORG is not set" in keyless.stderr
        assert "[destinations.shop-broken] segmentify settings: dataCenterUrl must be an http(s) URL" in keyless.stderr
        keyless_dead = run("outbox", "dead", "--config", str(broken), "--destination", "shop-wigzo", environ=bare)
        assert keyless_dead.returncode == 0, keyless_dead.stderr
        assert keyless_dead.stdout == ""
        assert "0 dead request(s) shown" in keyless_dead.stderr
        no_drain = run("outbox", "drain", "--config", str(broken), environ=bare)
        assert no_drain.returncode == 2
        assert "environment variable WIGZO_ORG is not set" in no_drain.stderr

        seg.script = lambda _: Answer()
        keyless_seg = {k: v for k, v in env().items() if k != "SEG_KEY"}
        listed_dead = run("outbox", "dead", "--config", str(config), "--destination", "shop-segmentify",
                          environ=keyless_seg)  # fmt: skip
        # The URL as stored: the instance's base URL is one of its settings, not made here.
        assert [json.loads(line)["url"] for line in listed_dead.stdout.splitlines()] == ["/add/events/v1.json"] * 3
        replay = run("outbox", "replay", "--config", str(config), "--destination", "shop-segmentify",
                     environ=keyless_seg)  # fmt: skip
        assert replay.returncode == 0, replay.stderr
        assert replay.stdout.startswith("3 dead request(s) back in the outbox and 0 inbox event(s)")
        assert "environment variable SEG_KEY is not set" in replay.stderr
        drain = run("outbox", "drain", "--config", str(config))
        assert drain.returncode == 0
        assert sorted(product_ids(seg.delivered())) == ["P0", "P1", "P2"]
    for result in (res, stats, dead, keyless, keyless_dead, no_drain, listed_dead, replay, drain):
        assert SECRET not in result.stdout + result.stderr
    data = on_disk(tmp_path / "outbox.sqlite3")
    assert SECRET.encode() not in data
    assert TOKEN.encode() not in data


def test_replay_names_each_id_given_that_names_nothing_dead(tmp_path: Path) -> None:
    """`replay --id/--event` with ids of no dead request (pending, another instance's dead one, none at all) or of
    no dead inbox event: the dead ones go back, and each other id is named with what it is, exit 2."""

    def refuse(_: Received) -> Answer:
        return Answer(400, {"error": "refused"})

    with RecordingServer(refuse) as seg, RecordingServer(refuse) as wz:
        config = write_config(tmp_path, seg.url, wz.url)
        res = run("send", "--config", str(config), stdin="\n".join(json.dumps(e) for e in events(2)))
        assert res.returncode == 1
        dead = run("outbox", "dead", "--config", str(config))
        rows = [json.loads(line) for line in dead.stdout.splitlines()]
        by_instance = {(r["destination"], r["messageId"]): r["id"] for r in rows}
        seg_dead, wigzo_dead = by_instance[("shop-segmentify", "m0")], by_instance[("shop-wigzo", "m0")]
        missing = max(r["id"] for r in rows) + 100
        replay = run("outbox", "replay", "--config", str(config), "--destination", "shop-segmentify", "--id",
                     str(seg_dead), str(wigzo_dead), str(missing))  # fmt: skip
        assert replay.returncode == 2, replay.stderr
        assert replay.stderr.startswith("1 replayed; left as they are: ")
        assert f"request {wigzo_dead}: a dead request of shop-wigzo, not of shop-segmentify" in replay.stderr
        assert f"request {missing}: no such request (delivered and forgotten, or never stored)" in replay.stderr
        assert f"request {seg_dead}:" not in replay.stderr
        again = run("outbox", "replay", "--config", str(config), "--id", str(seg_dead))  # pending now
        assert again.returncode == 2
        assert f"0 replayed; left as they are: request {seg_dead}: pending, not dead" in again.stderr
        events_given = run("outbox", "replay", "--config", str(config), "--event", "7")
        assert events_given.returncode == 2
        assert "inbox event 7: not in the inbox (mapped already, or never accepted)" in events_given.stderr
        # A dead inbox event (as a mapping process sets one aside) given with --destination: no instance's, so left.
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        outbox.accept_events([{"type": "track", "event": "Product Added", "userId": "u", "messageId": "stuck"}])
        with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
            (stuck,) = db.execute("UPDATE inbox SET dead_reason = 'set aside', dead_at = 1 RETURNING id").fetchone()
        outbox.close()
        for_one = run("outbox", "replay", "--config", str(config), "--destination", "shop-segmentify", "--event",
                      str(stuck))  # fmt: skip
        assert for_one.returncode == 2
        assert (f"inbox event {stuck}: dead, but an inbox event is no instance's: replay it without --destination"
                in for_one.stderr)  # fmt: skip
        assert run("outbox", "replay", "--config", str(config), "--event", str(stuck)).returncode == 0
        huge = run("outbox", "replay", "--config", str(config), "--id", str(2**64))
        assert huge.returncode == 2
        assert f"{2**64} is not a row id (1 to {2**63 - 1})" in huge.stderr
        assert "Traceback" not in huge.stderr
        seg.script = wz.script = lambda _: Answer()
        assert run("outbox", "replay", "--config", str(config)).returncode == 0
        assert run("outbox", "drain", "--config", str(config)).returncode == 0
        nothing = run("outbox", "replay", "--config", str(config))
        assert (nothing.returncode, nothing.stdout) == (0, "nothing dead to replay\n")


def test_drain_says_what_waits_for_instances_its_configuration_does_not_define(tmp_path: Path) -> None:
    """Rows of an instance taken out of the file: `drain` delivers the others and says those wait (exit 1, not
    "drained"); `dead` and `replay` can still name that instance; a name nowhere is refused with both lists."""
    with RecordingServer() as seg, RecordingServer() as wz:
        config = write_config(tmp_path, seg.url, wz.url)
        res = run("send", "--config", str(config), "--no-wait", stdin="\n".join(json.dumps(e) for e in events(3)))
        assert res.returncode == 0, res.stderr
        only_seg = tmp_path / "only-segmentify.toml"
        only_seg.write_text(config.read_text().split("[destinations.shop-wigzo]")[0])
        drain = run("outbox", "drain", "--config", str(only_seg))
        assert drain.returncode == 1
        assert f"3 request(s) wait for instances {only_seg} does not define: shop-wigzo (3)" in drain.stderr
        assert sorted(product_ids(seg.delivered())) == ["P0", "P1", "P2"]
        assert wz.received == []
        dead = run("outbox", "dead", "--config", str(only_seg), "--destination", "shop-wigzo")
        assert dead.returncode == 0, dead.stderr
        nowhere = run("outbox", "dead", "--config", str(only_seg), "--destination", "nope")
        assert nowhere.returncode == 2
        assert "no destination instance 'nope' (configured: shop-segmentify; in the outbox only: shop-wigzo)" in (
            nowhere.stderr
        )
        replay = run("outbox", "replay", "--config", str(only_seg), "--destination", "shop-wigzo")
        assert replay.returncode == 0, replay.stderr
        assert f"shop-wigzo is not defined in {only_seg}: its requests wait for a configuration" in replay.stderr
        again = run("outbox", "drain", "--config", str(config))  # the whole file: everything goes
        assert again.returncode == 0, again.stderr
        assert len(wz.received) > 0
        # Nothing of the instance left pending (its rows delivered): the smaller file drains, exit 0.
        done = run("outbox", "drain", "--config", str(only_seg))
        assert done.returncode == 0, done.stderr
        assert "wait for instances" not in done.stderr
    # A mistyped name where there is no outbox yet: refused, and no outbox made for it.
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(only_seg.read_text().replace(str(tmp_path / "outbox.sqlite3"), str(tmp_path / "new.sqlite3")))
    mistyped = run("outbox", "dead", "--config", str(elsewhere), "--destination", "shop-segmentfy")
    assert mistyped.returncode == 2
    assert "no destination instance 'shop-segmentfy' (configured: shop-segmentify)" in mistyped.stderr
    assert not (tmp_path / "new.sqlite3").exists()


def test_sigkill_mid_send_loses_nothing(tmp_path: Path) -> None:
    """2,000 messages against a slow vendor; the first `send` is killed with SIGKILL mid-way, a
    second `send` of the same file drains the outbox. Every message arrives at least once; those
    that arrive twice were in flight at the kill, so they are bounded by concurrency x batch size."""
    concurrency, batch = 2, 5
    with RecordingServer(lambda _: Answer(delay=0.03)) as seg, RecordingServer() as wz:
        config = write_config(
            tmp_path,
            seg.url,
            wz.url,
            concurrency=concurrency,
            batch_size=batch,
            lease=2.0,
            connect_timeout=0.5,
            read_timeout=1.0,
        )
        # Only Segmentify is slow and killed mid-way; Wigzo is removed to keep the run short.
        text = config.read_text()
        config.write_text(text[: text.index("[destinations.shop-wigzo]")])
        file = tmp_path / "events.jsonl"
        file.write_text("\n".join(json.dumps(e) for e in events(2000, users=100)))

        first = subprocess.Popen(
            [SCRIPT, "send", "--config", str(config), "--quiet", str(file)],
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while len(product_ids(seg.delivered())) < 300 and time.time() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        before = len(product_ids(seg.delivered()))
        assert 300 <= before < 2000, "the kill landed mid-way"

        second = run("send", "--config", str(config), "--quiet", str(file))
        assert second.returncode == 0, second.stderr
        assert "(2000 already there)" in second.stderr
        counts = Counter(product_ids(seg.delivered()))
    assert set(counts) == {f"P{i}" for i in range(2000)}
    twice = sum(c - 1 for c in counts.values())
    print(f"crash test: {before} delivered before SIGKILL, {twice} delivered twice (bound {concurrency * batch})")
    assert twice <= concurrency * batch

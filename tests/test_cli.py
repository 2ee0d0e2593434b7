"""The `destinations` console script, run for real in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = shutil.which("destinations", path=str(Path(sys.executable).parent)) or "destinations"
SECRET = "sk-cli-5f1e2d3c4b5a"
SETTINGS = json.dumps({"apiKey": SECRET, "dataCenterUrl": "https://dce1.segmentify.com"})


def run(*args: str, stdin: str = "", cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args], check=False, input=stdin, capture_output=True, text=True, cwd=cwd, timeout=60
    )


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.split("\n") if line.strip()]


def test_list_shows_settings_with_required_and_secret() -> None:
    res = run("list")
    assert res.returncode == 0, res.stderr
    assert "segmentify  (integrations key: Segmentify)" in res.stdout
    assert "dengage  (integrations key: Dengage)" in res.stdout
    assert any(line.split() == ["apiKey", "required,", "secret"] for line in res.stdout.splitlines())
    assert any(line.split() == ["testMode", "optional"] for line in res.stdout.splitlines())
    # Each destination's flags are one column, whatever the length of its longest setting name (consentCategories).
    blocks: list[list[str]] = []
    for line in res.stdout.splitlines():
        if not line.startswith(" "):
            blocks.append([])
        else:
            blocks[-1].append(line)
    assert len(blocks) == 4
    for block in blocks:
        assert len({line.index(line.split()[1]) for line in block}) == 1, block


def test_list_name_prints_each_declared_field_with_its_sources() -> None:
    res = run("list", "segmentify")
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[0] == "segmentify  (integrations key: Segmentify)"
    assert "dengage" not in res.stdout
    row = out.index(next(line for line in out if line.split()[:1] == ["CHECKOUT.purchase.orderNo"]))
    assert out[row + 1].strip() == "properties.order_id || properties.orderId"
    image = out.index("    PRODUCT_VIEW.image  (text, required)")
    assert out[image + 1].strip() == ("product.image_url || product.imageUrl || options.image_url || options.imageUrl")
    total = out.index("    CHECKOUT.purchase.totalPrice  (number, required)")
    assert out[total + 1].strip() == "properties.total || properties.revenue || properties.value || else line_item_sum"
    unknown = run("list", "nope")
    assert unknown.returncode == 2
    assert "no destination type 'nope'" in unknown.stderr


def test_transform_prints_warnings_on_the_message_line() -> None:
    message = {
        "messageId": "w1",
        "type": "identify",
        "userId": "u-7",
        "context": {"sessionId": "s1", "traits": {"email": "ann@example.com", "firstName": "Ann"}},
        "traits": {"birthday": "17/05/1990", "createdAt": 1700000000},
    }
    res = run("transform", "segmentify", "--settings", SETTINGS, stdin=json.dumps(message))
    assert res.returncode == 0, res.stderr
    (line,) = lines(res.stdout)
    (event,) = line["requests"][0]["json"]
    assert (event["email"], event["fullName"], event["memberSince"]) == ("ann@example.com", "Ann", "14.11.2023")
    assert "birthdate" not in event
    (warning,) = line["warnings"]
    assert warning.startswith("identify: traits.birthday must be an ISO-8601 date")
    assert warning.endswith("left out of Segmentify USER_OPERATIONS.update (birthdate)")


def test_transform_survives_what_json_allows_and_utf8_does_not() -> None:
    first = {"type": "track", "userId": "u", "event": "ok", "messageId": "\udc00", "context": {"sessionId": "s"}}
    third = {"type": "track", "userId": "u", "event": "Coupon\u2028Applied", "messageId": "m3"}
    deep = "[" * 5000 + "]" * 5000
    stdin = "\n".join([json.dumps(first), deep, json.dumps(third, ensure_ascii=False)])
    res = run("transform", "segmentify", "--settings", SETTINGS, stdin=stdin)
    assert res.returncode == 1, res.stderr  # the deep line is reported, the others mapped
    assert "Traceback" not in res.stderr
    one, two, three = lines(res.stdout)
    assert one["messageId"] == "\udc00"  # written as its JSON escape
    assert one["requests"][0]["json"][0]["type"] == "ok"
    assert two == {"messageId": None, "error": "line 2: nested too deeply to be read"}
    assert three["requests"][0]["json"][0]["type"] == "Coupon\u2028Applied"


def test_python_dash_m_works_too() -> None:
    res = subprocess.run([sys.executable, "-m", "destinations", "list"], capture_output=True, text=True, check=False)
    assert res.returncode == 0
    assert "segmentify" in res.stdout


def test_transform_json_lines_from_stdin() -> None:
    stdin = "\n".join(
        [
            json.dumps(
                {
                    "messageId": "m1",
                    "type": "track",
                    "event": "Product Added",
                    "userId": "u1",
                    "context": {"sessionId": "s1"},
                    "properties": {"product_id": "P1", "price": "19.90", "quantity": "2", "currency": "TRY"},
                }
            ),
            json.dumps({"messageId": "m2", "type": "group", "userId": "u1", "groupId": "g"}),
            json.dumps(
                {"messageId": "m3", "type": "track", "event": "Product Added", "userId": "u1", "properties": {}}
            ),
            "{not json",
        ]
    )
    res = run("transform", "segmentify", "--settings", SETTINGS, stdin=stdin)
    assert res.returncode == 1  # one message was invalid
    out = lines(res.stdout)
    assert [o["messageId"] for o in out] == ["m1", "m2", "m3", None]
    (request,) = out[0]["requests"]
    assert request["url"] == "https://dce1.segmentify.com/add/events/v1.json"
    assert request["params"] == {"apiKey": SECRET}  # what is sent: the user asked for it
    event = request["json"][0]
    assert (event["name"], event["step"], event["price"], event["quantity"]) == ("BASKET_OPERATIONS", "add", 19.9, 2)
    assert "group" in out[1]["filtered"]
    assert out[2]["error"].startswith("Product Added: properties.product_id is required by Segmentify")
    assert out[3]["error"].startswith("line 4: not valid JSON")


def test_transform_a_json_array_file_exits_0(tmp_path: Path) -> None:
    file = tmp_path / "events.json"
    file.write_text(
        json.dumps(
            [
                {"type": "page", "anonymousId": "a1", "name": "Home", "context": {"sessionId": "s"}},
                {
                    "type": "identify",
                    "userId": "u9",
                    "traits": {"email": "u9@example.com"},
                    "context": {"sessionId": "s"},
                },
            ]
        )
    )
    res = run("transform", "dengage", "--settings", SETTINGS, str(file))
    assert res.returncode == 0, res.stderr
    out = lines(res.stdout)
    assert [o["requests"][0]["json"][0]["name"] for o in out] == ["PAGE_VIEW", "USER_OPERATIONS"]


def test_transform_settings_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(SETTINGS)
    res = run("transform", "segmentify", "--settings", str(path), stdin='{"type":"page","userId":"u"}')
    assert res.returncode == 0, res.stderr
    assert lines(res.stdout)[0]["requests"][0]["json"][0]["category"] == "Page"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (json.dumps({"apiKey": SECRET}), "dataCenterUrl is required"),
        (
            json.dumps({"apiKey": SECRET, "dataCenterUrl": "dce1.segmentify.com"}),
            "dataCenterUrl must be an http(s) URL",
        ),
        ('{"apiKey": "' + SECRET + '", oops}', "--settings: not valid JSON"),
        ("/no/such/settings.json", "--settings: not JSON and not a readable file"),
    ],
)
def test_transform_bad_settings_exit_2_without_the_secret(settings: str, expected: str) -> None:
    res = run("transform", "segmentify", "--settings", settings, stdin="{}")
    assert res.returncode == 2
    assert expected in res.stderr
    assert SECRET not in res.stderr
    assert SECRET not in res.stdout


def test_transform_unknown_destination_exits_2() -> None:
    res = run("transform", "nope", "--settings", "{}", stdin="{}")
    assert res.returncode == 2
    assert "unknown destination 'nope'" in res.stderr


def test_check_passes_on_the_shipped_fixtures() -> None:
    res = run("check")
    assert res.returncode == 0, res.stdout[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    passed, failed = last.split(", ")
    assert failed == "0 failed"
    assert int(passed.split()[0]) >= 35


def test_check_reports_a_failing_case_with_a_diff(tmp_path: Path) -> None:
    folder = tmp_path / "segmentify"
    folder.mkdir()
    case = {
        "description": "a wrong expectation",
        "settings": {"apiKey": "k", "dataCenterUrl": "https://dce1.segmentify.com"},
        "message": {"type": "page", "userId": "u", "name": "Home", "context": {"sessionId": "s"}},
        "expect": {
            "requests": [
                {
                    "method": "POST",
                    "url": "https://dce1.segmentify.com/add/events/v1.json",
                    "params": {"apiKey": "k"},
                    "headers": {"Content-Type": "application/json", "Accept": "application/json"},
                    "json": [
                        {"name": "PAGE_VIEW", "userId": "u", "sessionId": "s", "device": "PC", "category": "Shop"}
                    ],
                }
            ]
        },
    }
    (folder / "wrong.json").write_text(json.dumps(case))
    good = dict(case, expect={"filtered": "x"}, message={"type": "alias", "userId": "u", "previousId": "x"})
    good["expect"] = {"filtered": "alias"}
    (folder / "good.json").write_text(json.dumps(good))
    res = run("check", str(tmp_path))
    assert res.returncode == 1
    assert f"FAIL {folder / 'wrong.json'}" in res.stdout
    assert '-        "category": "Shop",' in res.stdout
    assert '+        "category": "Home",' in res.stdout
    assert res.stdout.strip().endswith("1 passed, 1 failed")


def test_check_missing_folder_is_usage_error(tmp_path: Path) -> None:
    res = run("check", str(tmp_path / "absent"))
    assert res.returncode == 2
    assert "no such folder" in res.stderr


def test_usage_faults_get_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "d.toml"
    config.write_text(
        f'[outbox]\npath = "{tmp_path / "o.sqlite3"}"\n[destinations.a]\ntype = "wigzo"\norgToken = "t"\n'
    )
    cases = [
        (["transform", "segmentify", "--settings", SETTINGS, str(tmp_path / "missing.json")], "cannot read"),
        (["send", "--config", str(config), str(tmp_path / "missing.json")], "cannot read"),
        (["demo", "--users", "0"], "--users must be 1 or more"),
        (["outbox", "dead", "--config", str(config), "--destination", "nope"], "no destination instance 'nope'"),
    ]
    for args, text in cases:
        res = run(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert text in res.stderr
        assert "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    # Input that is not JSON is reported and fails the run.
    res = run("send", "--config", str(config), "--no-wait", "--quiet", stdin="not json\n")
    assert res.returncode == 1
    assert "not valid JSON" in res.stderr
    assert run("--version").stdout.startswith("destinations ")
    out = tmp_path / "new" / "folder"
    assert run("demo", "--offline", "--users", "1", "--out", str(out)).returncode == 0
    assert (out / "requests.jsonl").exists()

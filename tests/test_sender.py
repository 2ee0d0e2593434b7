"""The sender and the one place that classifies answers (requests-mock: unit level only)."""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import re
import time
from urllib.parse import quote

import pytest
import requests
import requests_mock as rm

from destinations import get_destination
from destinations.base import HttpRequest
from destinations.delivery.sender import Sender, classify, merge, parse_retry_after
from destinations.redaction import redact_query

SECRET = "sk-sender-1a2b3c4d5e"
URL = "https://dce1.segmentify.com/add/events/v1.json"


@pytest.fixture
def sender() -> Sender:
    dest = get_destination("segmentify", {"apiKey": SECRET, "dataCenterUrl": "https://dce1.segmentify.com"})
    return Sender(dest, connect_timeout=1, read_timeout=1)


def request(*events: dict) -> HttpRequest:
    return HttpRequest("POST", URL, {}, {"Content-Type": "application/json"}, list(events), batchable=True)


@pytest.mark.parametrize(
    ("status", "body", "kind", "shown"),
    [
        (200, b'{"responses":[],"timestamp":1}', "delivered", "200"),
        (200, b'{"statusCode":"SUCCESS"}', "delivered", "200"),
        (200, b"not json", "delivered", "200"),
        (204, b"", "delivered", "204"),
        (200, b'{"statusCode":"BAD_INPUT"}', "permanent", "200 BAD_INPUT"),
        (200, b'{"statusCode":"NO_USERID"}', "permanent", "200 NO_USERID"),
        (200, b'{"statusCode":"NO_API_KEY"}', "config", "200 NO_API_KEY"),
        (200, b'{"statusCode":"UNVERIFIED_ACCOUNT"}', "config", "200 UNVERIFIED_ACCOUNT"),
        (408, b"", "retry", "408"),
        (423, b"", "retry", "423"),
        (429, b"", "retry", "429"),
        (500, b"", "retry", "500"),
        (502, b"", "retry", "502"),
        (599, b"", "retry", "599"),
        (501, b"", "permanent", "501"),
        (400, b"", "permanent", "400"),
        (404, b"", "permanent", "404"),
        (401, b"", "config", "401"),
        (403, b"", "config", "403"),
    ],
)
def test_classification(sender: Sender, status: int, body: bytes, kind: str, shown: str) -> None:
    with rm.Mocker() as m:
        m.post(URL, status_code=status, content=body)
        outcome = sender.send(request({"name": "PAGE_VIEW"}))
    assert (outcome.kind, outcome.status) == (kind, shown)


def test_credentials_are_added_and_body_is_compact_json(sender: Sender) -> None:
    with rm.Mocker() as m:
        m.post(URL, json={"statusCode": "SUCCESS"})
        sender.send(request({"name": "PAGE_VIEW", "title": "Ünïcode"}))
        (sent,) = m.request_history
    assert sent.qs == {"apikey": [SECRET.lower()]}  # requests-mock lower-cases query strings
    assert json.loads(sent.body) == [{"name": "PAGE_VIEW", "title": "Ünïcode"}]
    assert sent.body == b'[{"name":"PAGE_VIEW","title":"\\u00dcn\\u00efcode"}]'  # compact, ASCII-escaped
    assert sent.timeout == (1, 1)


@pytest.mark.parametrize(
    ("exc", "kind", "status"),
    [
        (requests.ConnectTimeout, "retry", "timeout"),
        (requests.ReadTimeout, "retry", "timeout"),
        (requests.ConnectionError, "retry", "connection error"),
        (requests.exceptions.ChunkedEncodingError, "retry", "connection error"),
        (requests.exceptions.InvalidURL, "config", "invalid url"),
    ],
)
def test_exceptions_become_outcomes(sender: Sender, exc: type[Exception], kind: str, status: str) -> None:
    with rm.Mocker() as m:
        m.post(URL, exc=exc(f"failed for {URL}?apiKey={SECRET}"))
        outcome = sender.send(request({}))
    assert (outcome.kind, outcome.status) == (kind, status)
    assert SECRET not in outcome.detail


def test_response_bodies_are_redacted_and_truncated(sender: Sender) -> None:
    with rm.Mocker() as m:
        m.post(URL, status_code=400, text=f"bad key {SECRET} " + "x" * 2000)
        outcome = sender.send(request({}))
    assert SECRET not in outcome.detail
    assert "bad key ***" in outcome.detail
    assert len(outcome.detail) <= 500


def test_retry_after_seconds_date_and_cap(sender: Sender) -> None:
    now = time.time()
    assert parse_retry_after("7", now, 600) == 7
    assert parse_retry_after("100000", now, 600) == 600
    assert parse_retry_after("-5", now, 600) == 0
    assert parse_retry_after("soon", now, 600) is None
    assert parse_retry_after(None, now, 600) is None
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now, 600) <= 31  # type: ignore[operator]
    with rm.Mocker() as m:
        m.post(URL, status_code=429, headers={"Retry-After": "12"})
        assert sender.send(request({})).retry_after == 12


def test_merge_concatenates_in_order() -> None:
    merged = merge([request({"n": 1}), request({"n": 2}, {"n": 3})])
    assert merged.json == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert merged.batchable


def test_url_logging_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    Sender(get_destination("wigzo", {"orgToken": SECRET}))  # installs the filter
    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3.connectionpool").debug('"POST %s HTTP/1.1" 200', f"/e?token={SECRET}&org_token={SECRET}")
    assert SECRET not in caplog.text
    assert "token=***&org_token=***" in caplog.text
    assert redact_query(f"?apiKey={SECRET}&x=1") == "?apiKey=***&x=1"


def test_proxy_settings_from_the_environment_still_apply(monkeypatch: pytest.MonkeyPatch, sender: Sender) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "")
    fresh = Sender(sender.destination)
    with rm.Mocker() as m:
        m.post(URL, json={"statusCode": "SUCCESS"})
        fresh.send(request({}))
        (sent,) = m.request_history
    assert sent.proxies["https"] == "http://proxy.invalid:3128"


def test_a_redirect_is_not_followed(sender: Sender) -> None:
    with rm.Mocker() as m:
        m.post(URL, status_code=301, headers={"Location": "https://elsewhere.example/"})
        m.get("https://elsewhere.example/", status_code=200)
        outcome = sender.send(request({}))
        assert len(m.request_history) == 1
    assert (outcome.kind, outcome.status) == ("permanent", "301")


def test_url_encoded_and_basic_credentials_are_masked() -> None:
    key = "seg+SECRET/key=="
    dest = get_destination("segmentify", {"apiKey": key, "dataCenterUrl": "https://dce1.segmentify.com"})
    with rm.Mocker() as m:
        m.post(URL, exc=requests.ConnectionError("Max retries exceeded with url: /e?apiKey=seg%2BSECRET%2Fkey%3D%3D"))
        outcome = Sender(dest).send(request({}))
    assert "SECRET" not in outcome.detail
    esp = get_destination("esputnik", {"apiKey": "esp-SECRET-key"})
    with rm.Mocker() as m:
        m.post("https://esputnik.com/api/v2/event", status_code=400, text="x" * 490 + " destinations:esp-SECRET-key")
        outcome = Sender(esp).send(HttpRequest("POST", "https://esputnik.com/api/v2/event", {}, {}, {}))
    assert "SECRET" not in outcome.detail


def test_answers_are_masked_in_the_forms_vendors_echo_keys() -> None:
    """A vendor that echoes the key as PHP's json_encode writes it (slashes escaped), percent-encoded in lower
    case, or in base64: none of those forms may reach a dead request's answer."""
    key = "SEGKEY/with+slash=and/more_0001"
    destination = get_destination("segmentify", {"apiKey": key, "dataCenterUrl": "https://dce1.segmentify.com"})
    forms = (
        key.replace("/", "\\/"),
        "SEGKEY%2fwith%2bslash%3dand%2fmore_0001",
        "SEGKEY%2Fwith%2Bslash%3Dand%2Fmore_0001",
        "SEGKEY/with%2Bslash%3Dand/more_0001",  # urllib's quote(): "/" left as it is
        base64.b64encode(key.encode()).decode(),
    )
    for echoed in forms:
        outcome = classify(destination, 400, {}, f'{{"error": "bad key {echoed}"}}'.encode())
        assert echoed not in outcome.detail, echoed
    # The key inside a longer text echoed in base64 (a URL with its query), wherever it starts: 0, 1 or 2 bytes
    # past a multiple of 3, so encoded three ways.
    for path, sent in [
        (p, k)
        for p in ("/e?apiKey=", "/e?apiKey=x", "/e?apiKey=xy")
        for k in (
            key,
            quote(key, safe=""),
            re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(key, safe="")),
            key.replace("/", "\\/"),
        )
    ]:
        echoed = base64.b64encode(f"{path}{sent}&lang=en".encode()).decode()
        outcome = classify(destination, 400, {}, f'{{"b64": "{echoed}"}}'.encode())
        shown = outcome.detail.split('"b64": "', 1)[1].split('"', 1)[0]
        # Every base64 character whose 6 bits lie wholly inside the key's bytes is masked; the ones it shares with
        # its neighbours, and the neighbours, are left.
        start, stop = 8 * len(path), 8 * (len(path) + len(sent))  # the key's bits in the encoded text
        first, end = -(-start // 6), stop // 6
        assert shown == echoed[:first] + "***" + echoed[end:], (path, sent, shown)
    # eSputnik's key travels inside a Basic header: the key itself, decoded, is masked in every form too.
    esputnik = get_destination("esputnik", {"apiKey": key})
    for echoed in (key, *forms):
        outcome = classify(esputnik, 401, {}, f'{{"error": "bad key {echoed}"}}'.encode())
        assert echoed not in outcome.detail, echoed


def test_a_plugins_secret_setting_that_is_no_credential_is_masked_in_answers_and_exceptions() -> None:
    """An answer or exception text that quotes a plugin's signing secret (a SecretStr setting it never sends)
    is stored masked, as its credentials are."""
    from pydantic import SecretStr

    from destinations.base import Credential, Destination, SettingsModel

    class Settings(SettingsModel):
        apiKey: SecretStr
        signingSecret: SecretStr
        baseUrl: str = "https://api.plugin.example"

    class Plugin(Destination):
        name = "plug"
        display_name = "Plug"
        credentials_declared = (Credential("apiKey", param="key"),)

    Plugin.Settings = Settings
    dest = Plugin({"apiKey": "k-123456", "signingSecret": "SIGN-secret-998877"})
    outcome = classify(dest, 400, {}, b'{"error": "signature SIGN-secret-998877 does not match"}')
    assert "SIGN-secret-998877" not in outcome.detail
    assert "signature *** does not match" in outcome.detail
    with rm.Mocker() as m:
        m.post("https://api.plugin.example/e", exc=requests.ConnectionError("signing with SIGN-secret-998877 failed"))
        sent = Sender(dest).send(HttpRequest("POST", "https://api.plugin.example/e", {}, {}, {}))
    assert "SIGN-secret-998877" not in sent.detail


def test_an_answer_the_vendor_rules_cannot_read_is_decided_by_its_status(caplog: pytest.LogCaptureFixture) -> None:
    """A 200 whose body is nested past what the JSON reader takes used to raise out of the classification: the
    batch went again after every lease, its outcome never recorded and nothing logged."""
    destination = get_destination("segmentify", {"apiKey": SECRET, "dataCenterUrl": "https://dce1.segmentify.com"})
    deep = b'{"statusCode":"SUCCESS","a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert classify(destination, 200, {}, deep).kind == "delivered"

    class Broken(type(destination)):  # type: ignore[misc]
        def response_problem(self, status: int, body: bytes) -> tuple[str, str] | None:
            raise RuntimeError("a plugin's bug")

    broken = Broken(destination.settings)
    with caplog.at_level(logging.WARNING, logger="destinations.delivery"):
        assert classify(broken, 200, {}, b"{}").kind == "delivered"
        assert classify(broken, 404, {}, b"{}").kind == "permanent"
    assert "could not be read for its own rules (RuntimeError); the HTTP status decides" in caplog.text

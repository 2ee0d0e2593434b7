"""The public API of DESIGN.md section 3: get_destination, settings errors, HttpRequest, reprs."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import pytest

import destinations
from destinations import ConfigurationError, Filtered, HttpRequest, InvalidMessage, get_destination
from destinations.base import Destination
from destinations.esputnik import basic_auth

SECRET = "sk-live-0123456789abcdef"


def segmentify(**overrides: Any) -> Destination:
    return get_destination(
        "segmentify", {"apiKey": SECRET, "dataCenterUrl": "https://dce1.segmentify.com", **overrides}
    )


def test_public_names_are_exported() -> None:
    for name in ("get_destination", "Destination", "HttpRequest", "InvalidMessage", "Filtered", "ConfigurationError"):
        assert hasattr(destinations, name)


@pytest.mark.parametrize("name", ["segmentify", "dengage"])
def test_settings_errors_name_each_bad_key(name: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        get_destination(name, {"dataCenterUrl": "ftp://dce1.segmentify.com", "apikey": SECRET})
    text = str(info.value)
    assert "apiKey is required" in text
    assert "dataCenterUrl must be an http(s) URL" in text
    assert "apikey is not a setting" in text  # a typo is caught, not ignored
    assert SECRET not in text
    assert len(info.value.problems) == 3


def test_missing_data_center_and_empty_key() -> None:
    with pytest.raises(ConfigurationError, match=r"apiKey must not be empty.*dataCenterUrl is required"):
        get_destination("segmentify", {"apiKey": "  "})


def test_secret_never_echoed_by_pydantic_errors() -> None:
    # pydantic echoes input values in its own messages; a wrong-typed secret must not leak through.
    with pytest.raises(ConfigurationError) as info:
        get_destination("segmentify", {"apiKey": SECRET, "dataCenterUrl": "https://d.example", "testMode": SECRET})
    assert "testMode must be true or false" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


def test_unknown_destination_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown destination 'segmentfy'; known: .*segmentify"):
        get_destination("segmentfy", {})


def test_settings_must_be_an_object() -> None:
    with pytest.raises(ConfigurationError, match="must be an object"):
        get_destination("segmentify", ["apiKey"])  # type: ignore[arg-type]


def test_destination_repr_hides_the_key() -> None:
    dest = segmentify()
    assert SECRET not in repr(dest)
    assert SECRET not in repr(dest.settings)
    assert "dce1.segmentify.com" in repr(dest)


def test_http_request_repr_masks_credentials_but_to_dict_keeps_them() -> None:
    req = HttpRequest(
        method="POST",
        url="https://x.example/e",
        params={"apiKey": SECRET, "token": SECRET, "org_token": SECRET, "page": "1"},
        headers={"Authorization": f"Basic {SECRET}", "Accept": "application/json"},
        json=[{"a": 1}],
    )
    shown = repr(req)
    assert SECRET not in shown
    assert "'page': '1'" in shown
    assert "application/json" in shown
    assert req.to_dict()["params"]["apiKey"] == SECRET
    assert req.to_dict()["headers"]["Authorization"] == f"Basic {SECRET}"


def test_http_requests_are_equal_when_their_fields_are() -> None:
    a = HttpRequest("POST", "https://x/e", {"k": "v"}, {"h": "1"}, [1])
    assert a == HttpRequest("POST", "https://x/e", {"k": "v"}, {"h": "1"}, [1])
    assert a != HttpRequest("POST", "https://x/e", {"k": "v"}, {"h": "1"}, [2])
    with pytest.raises(AttributeError):
        a.url = "https://y/e"  # type: ignore[misc]


def test_handle_accepts_a_dict_or_a_parsed_model() -> None:
    from destinations.spec import parse_message

    raw = {"type": "page", "userId": "u1", "name": "Home", "context": {"sessionId": "s1"}}
    dest = segmentify()
    assert dest.handle(raw) == dest.handle(parse_message(raw))
    (req,) = dest.handle(raw)
    assert req.batchable
    assert req.json[0]["category"] == "Home"


def test_order_of_decisions() -> None:
    dest = segmentify()
    # integrations off beats a missing identity; a missing identity is checked before vendor rules.
    with pytest.raises(Filtered):
        dest.handle({"type": "track", "event": "X", "integrations": {"Segmentify": False}})
    with pytest.raises(Filtered, match="does not take group calls"):
        dest.handle({"type": "group", "groupId": "g"})
    with pytest.raises(InvalidMessage, match=r"^Product Viewed: userId or anonymousId is required"):
        dest.handle({"type": "track", "event": "Product Viewed", "properties": {}})
    # ...but an unknown type is invalid before integrations are read.
    with pytest.raises(InvalidMessage, match="type must be one of"):
        dest.handle({"type": "purchase", "integrations": {"Segmentify": False}})


def test_a_mapping_bug_surfaces_as_an_internal_invalid_message(monkeypatch: pytest.MonkeyPatch) -> None:
    dest = segmentify()

    def broken(call: Any) -> Any:
        raise KeyError("boom")

    monkeypatch.setattr(type(dest), "other_event", staticmethod(broken))
    with pytest.raises(InvalidMessage) as info:
        dest.handle({"type": "track", "event": "Anything", "userId": "u"})
    assert info.value.internal
    assert "could not be mapped for Segmentify (KeyError)" in str(info.value)


def test_a_mapping_bugs_traceback_is_logged_without_the_instances_credentials(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A library caller's log masks nothing: a plugin's exception that quotes a key must not carry it there."""
    key = "sk-plugin/7d1e+9c2b=4a"  # characters that percent-encoding changes: its encoded form is another text
    dest = get_destination("esputnik", {"apiKey": key})  # sent as HTTP Basic: the header's forms too

    def quoting(call: Any) -> Any:
        value = call.settings.apiKey.get_secret_value()
        raise ValueError(f"vendor refused {value} ({quote(value)}, {basic_auth(value)})")

    monkeypatch.setattr(type(dest), "other_event", staticmethod(quoting))
    with caplog.at_level(logging.ERROR, logger="destinations"), pytest.raises(InvalidMessage):
        dest.handle({"type": "track", "event": "Anything", "userId": "u"})
    (record,) = [r for r in caplog.records if r.name == "destinations.base"]
    text = record.getMessage()
    assert "esputnik could not map a message" in text
    assert "Traceback" in text  # the traceback is still there
    assert "ValueError: vendor refused ***" in text
    assert key not in caplog.text
    assert quote(key) not in caplog.text
    assert basic_auth(key).split(" ", 1)[1] not in caplog.text


def test_a_plugins_secret_settings_and_credential_forms_are_masked_in_a_mapping_bugs_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plugin's secret that is no declared credential (a signing secret), and a credential sent in a form of
    its own (`Token token=...`), are masked too."""
    from pydantic import SecretStr

    from destinations.base import Credential, SettingsModel

    key, signing = "PLUGKEY-0123456789", "SIGNSECRET-abcdef"

    class Settings(SettingsModel):
        apiKey: SecretStr
        signingSecret: SecretStr
        baseUrl: str = "https://api.plugin.example"

    def leaking(call: Any) -> Any:
        settings = call.settings
        raise RuntimeError(f"refused apiKey={settings.apiKey.get_secret_value()} "
                           f"signingSecret={settings.signingSecret.get_secret_value()}")  # fmt: skip

    class Plugin(Destination):
        name = "plug"
        display_name = "Plug"
        credentials_declared = (Credential("apiKey", header="Authorization", form=lambda v: f"Token token={v}"),)
        other_event = staticmethod(leaking)

    Plugin.Settings = Settings
    dest = Plugin({"apiKey": key, "signingSecret": signing})
    assert set(dest.secrets()) == {key, signing, f"Token token={key}"}
    with caplog.at_level(logging.ERROR, logger="destinations"), pytest.raises(InvalidMessage):
        dest.handle({"type": "track", "event": "Anything", "userId": "u"})
    assert "RuntimeError: refused apiKey=*** signingSecret=***" in caplog.text
    assert key not in caplog.text
    assert signing not in caplog.text


def test_plugins_come_from_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from destinations import registry
    from destinations.segmentify import SegmentifyDestination

    class Plugin(SegmentifyDestination):
        name = "acme"
        display_name = "Acme"

    class FakeEntryPoint:
        name = "acme"

        def load(self) -> type:
            return Plugin

    class Hijack(FakeEntryPoint):
        name = "segmentify"

    monkeypatch.setattr(registry, "entry_points", lambda group: [FakeEntryPoint(), Hijack()])
    registry.destination_types.cache_clear()
    try:
        assert registry.destination_types()["acme"] is Plugin
        assert registry.destination_types()["segmentify"] is SegmentifyDestination
        dest = get_destination("acme", {"apiKey": "k", "dataCenterUrl": "https://acme.example"})
        assert isinstance(dest, Plugin)
    finally:
        registry.destination_types.cache_clear()


def test_requests_of_every_destination_own_their_params_and_headers() -> None:
    """Mutating one request's dicts must not leak into the next (no shared defaults)."""
    from test_robustness import SAMPLE_SETTINGS

    from destinations.registry import BUILT_IN

    message = {"type": "page", "userId": "u", "properties": {"url": "https://shop.example/"},
               "context": {"traits": {"email": "a@b.co"}}}  # fmt: skip
    for name in BUILT_IN:
        dest = get_destination(name, SAMPLE_SETTINGS[name])
        first = dest.handle(message)[0]
        first.params["leak"] = "1"
        first.headers["X-Leak"] = "1"
        second = dest.handle(message)[0]
        assert "leak" not in second.params, name
        assert "X-Leak" not in second.headers, name


def test_named_tuples_built_without_their_constructors_get_every_field() -> None:
    # base.py, fields.py and the outbox's pack reading build these with tuple.__new__ and every field in order (a
    # frame less per event): a field added to one of them must be added to those calls too, which this count makes
    # someone look at.
    from destinations.base import Handled
    from destinations.delivery.outbox import Row
    from destinations.delivery.packing import PackEntry
    from destinations.fields import Item

    assert (len(HttpRequest._fields), len(Handled._fields), len(Item._fields)) == (7, 2, 2)
    assert (len(Row._fields), len(PackEntry._fields)) == (16, 11)  # outbox._pack_rows, packing.entries_of
    dest = get_destination("segmentify", {"apiKey": "k-api-1", "dataCenterUrl": "https://dce1.segmentify.com"})
    handled = dest.handle_with_warnings({"type": "identify", "userId": "u1", "traits": {"email": "a@shop.example"}})
    (request,) = handled.requests
    assert request == HttpRequest(*request)
    assert request.secret_names == frozenset({"apikey"})
    assert type(handled) is Handled


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("https://a b.example com", "must have a valid host name"),
        ("https://x\ny.example", "must not contain control characters"),
        ("https://shop.example/a\x85b", "must not contain control characters"),
        ("https://:80", "must have a valid host name"),
        ("https://shop.example:0", "must have a port from 1 to 65535"),
        ("https://[fe80::1%25\u00e9]", "must have a valid host name"),
        ("https://[v1.x]", "must have a valid host name"),
        ("https://[::1", "must be an http(s) URL with a valid host and port"),
        ("https://shop.example:99999", "must be an http(s) URL with a valid host and port"),
        ("https://shop.example:port", "must be an http(s) URL with a valid host and port"),
        ("https://sh<op>.example", "must have a valid host name"),
        ("ftp://shop.example", "must be an http(s) URL"),
        ("https://shop.example/?", "must not carry a query string or fragment"),  # an empty one too
        ("https://shop.example#", "must not carry a query string or fragment"),
        ("https://user:pw@shop.example", "must not carry a user name or password"),
    ],
)
def test_a_base_url_no_request_can_go_to_is_refused_with_its_rule(url: str, rule: str) -> None:
    """Refused when the instance is made, naming the setting and the rule, rather than failing at each send with
    an error that blames the vendor."""
    for kind, setting in (("segmentify", "dataCenterUrl"), ("wigzo", "baseUrl"), ("esputnik", "baseUrl")):
        key = "orgToken" if kind == "wigzo" else "apiKey"
        with pytest.raises(ConfigurationError) as info:
            get_destination(kind, {key: "k-123456", setting: url})
        assert f"{setting} {rule}" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://магазин.example", "http://127.0.0.1:8080", "https://[::1]:9000/api/", "https://Shop.Example",
        "http://vendor_mock:8080", "http://localhost:8080", "https://[fe80::1%25eth0]:9000",
        "https://api.example/path with space",  # requests sends it as %20
    ],
)  # fmt: skip
def test_a_base_url_with_an_international_name_an_address_or_a_port_is_taken(url: str) -> None:
    dest = get_destination("segmentify", {"apiKey": "k-123456", "dataCenterUrl": url})
    assert dest.base_url == url.rstrip("/")


def test_an_instances_secrets_are_found_in_lists_mappings_and_nested_models() -> None:
    """What every log, stored answer and error masks (`Destination.secrets`): each SecretStr wherever settings
    hold it, and each credential as sent."""
    from pydantic import BaseModel, Field, SecretStr

    from destinations.base import Credential, SettingsModel

    class Signing(BaseModel):
        secret: SecretStr

    class Settings(SettingsModel):
        apiKey: SecretStr
        fallbackKeys: list[SecretStr] = Field(default_factory=list)
        signing: Signing | None = None
        byRegion: dict[str, SecretStr] = Field(default_factory=dict)
        baseUrl: str = "https://api.plugin.example"

    class Plugin(Destination):
        name = "plug"
        display_name = "Plug"
        credentials_declared = (Credential("apiKey", header="Authorization", form=lambda v: f"Token token={v}"),)

    Plugin.Settings = Settings
    dest = Plugin({"apiKey": "k-main", "fallbackKeys": ["k-old-1", "k-old-2"], "signing": {"secret": "s-sign"},
                   "byRegion": {"eu": "k-eu"}})  # fmt: skip
    assert sorted(dest.secrets()) == sorted(["k-main", "k-old-1", "k-old-2", "s-sign", "k-eu", "Token token=k-main"])


def test_an_unknown_device_option_is_named_where_it_was_read() -> None:
    """The path is the one read: `integrations.Segmentify.device`, or where a field mapping moved it."""
    settings = {"apiKey": "k-123456", "dataCenterUrl": "https://dce1.segmentify.com"}
    message = {"type": "page", "userId": "u", "context": {"sessionId": "s"}, "properties": {"dev": "laptop"},
               "integrations": {"Segmentify": {"device": "laptop"}}}  # fmt: skip
    with pytest.raises(InvalidMessage) as info:
        get_destination("segmentify", settings).handle(message)
    assert (info.value.path, str(info.value)) == (
        "integrations.Segmentify.device",
        "page: integrations.Segmentify.device must be one of PC, TABLET, MOBILE, ANDROID, IOS (Segmentify device)",
    )
    moved = get_destination("segmentify", {**settings, "fieldMappings": {"device": "properties.dev"}})
    with pytest.raises(InvalidMessage) as info:
        moved.handle({**message, "integrations": {}})
    assert info.value.path == "properties.dev"

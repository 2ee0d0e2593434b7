"""Users shape the mapping: event mappings, custom names, allowed and blocked events, field mappings and consent,
through every way settings arrive (library, destinations.toml with `send`, the server, a rudder-server Config)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_rudder import RUDDER_HEADERS, processor_event, rudder_message
from test_server import WRITE_KEY, events_of, live, make_config, wait_for

from destinations import ConfigurationError, Filtered, InvalidMessage, get_destination
from destinations.config import parse_config
from destinations.sink import RecordingServer

SEGMENTIFY = {"apiKey": "sk-shape-1", "dataCenterUrl": "https://dce1.segmentify.com"}
WIGZO = {"orgToken": "org-shape-1"}


def one(name: str, settings: dict[str, Any], message: dict[str, Any]) -> Any:
    (request,) = get_destination(name, settings).handle(message)
    return request.json[0] if isinstance(request.json, list) else request.json


def test_event_mappings_map_their_names_onto_spec_events() -> None:
    settings = {**SEGMENTIFY, "eventMappings": {"Add To Cart": "Product Added"}}
    message = {"type": "track", "event": "add to cart", "userId": "u1", "properties": {"product_id": "p1"},
               "context": {"sessionId": "s", "page": {"url": "https://shop.example/p1"}}}  # fmt: skip
    event = one("segmentify", settings, message)
    assert (event["name"], event["step"], event["productId"]) == ("BASKET_OPERATIONS", "add", "p1")
    # RudderStack's eventsMapping form: a list of {from, to} rows.
    rows = {**SEGMENTIFY, "eventMappings": [{"from": "Purchase", "to": "Order Completed"}, {"from": "", "to": ""}]}
    order = {"order_id": "o1", "total": 5, "products": [{"product_id": "p", "price": 5}]}
    purchase = {
        "type": "track",
        "event": "Purchase",
        "userId": "u1",
        "context": {"sessionId": "s"},
        "properties": order,
    }
    assert one("segmentify", rows, purchase)["step"] == "purchase"


def test_field_mappings_replace_the_declared_sources() -> None:
    identify = {"type": "identify", "userId": "u-7", "traits": {"contact_email": "ann@example.com"}}
    with pytest.raises(Exception, match=r"traits\.email or traits\.phone is required"):
        get_destination("wigzo", WIGZO).handle(identify)
    mapped = one("wigzo", {**WIGZO, "fieldMappings": {"email": "traits.contact_email"}}, identify)
    assert mapped["email"] == "ann@example.com"
    # Event-qualified: only that event's field.
    settings = {**SEGMENTIFY, "fieldMappings": {"PRODUCT_VIEW.image": "properties.picture"}}
    product = {"type": "track", "event": "Product Viewed", "userId": "u1", "context": {"sessionId": "s"},
               "properties": {"product_id": "p", "name": "N", "url": "https://s/p", "category": "C", "price": 1,
                              "picture": "https://cdn/p.png", "image_url": "https://cdn/ignored.png"}}  # fmt: skip
    assert one("segmentify", settings, product)["image"] == "https://cdn/p.png"


def test_custom_event_names_are_sent_as_given() -> None:
    message = {"type": "track", "event": "Wishlist Shared", "userId": "u1", "context": {"sessionId": "s"}}
    names = {"customEventNames": {"wishlist shared": "share_wishlist"}}
    assert one("wigzo", {**WIGZO, **names}, message)["eventName"] == "share_wishlist"
    assert one("segmentify", {**SEGMENTIFY, **names}, message)["type"] == "share_wishlist"
    assert one("esputnik", {"apiKey": "k", **names}, message)["eventTypeKey"] == "share_wishlist"


def test_allowed_and_blocked_events() -> None:
    settings = {**WIGZO, "blockedEvents": ["Debug Ping"]}
    with pytest.raises(Filtered, match=r"blockedEvents of Wigzo lists 'Debug Ping'"):
        get_destination("wigzo", settings).handle({"type": "track", "event": "Debug Ping", "userId": "u"})
    assert one("wigzo", settings, {"type": "track", "event": "Coupon Applied", "userId": "u"})["eventName"]
    allowed = {**WIGZO, "allowedEvents": ["Coupon Applied"]}
    with pytest.raises(Filtered, match=r"allowedEvents of Wigzo does not list 'Coupon Removed'"):
        get_destination("wigzo", allowed).handle({"type": "track", "event": "Coupon Removed", "userId": "u"})
    # Other calls are not events: an identify still goes.
    assert one("wigzo", allowed, {"type": "identify", "userId": "u", "traits": {"email": "a@example.com"}})


@pytest.mark.parametrize(
    ("context", "sent"),
    [
        ({"consent": {"categoryPreferences": {"Marketing": False}}}, False),
        ({"consent": {"categoryPreferences": {"Analytics": True}}}, False),  # missing: not consented
        ({"consent": {"categoryPreferences": {"Marketing": True}}}, True),
        ({"consentManagement": {"allowedConsentIds": ["Marketing"], "deniedConsentIds": []}}, True),
        ({"consentManagement": {"allowedConsentIds": [], "deniedConsentIds": ["Marketing"]}}, False),
        ({}, True),  # no consent information: sent, as Segment does
    ],
)
def test_consent(context: dict[str, Any], sent: bool) -> None:
    settings = {**WIGZO, "consentCategories": ["Marketing"]}
    message = {"type": "track", "event": "Coupon Applied", "userId": "u", "context": context}
    if sent:
        assert one("wigzo", settings, message)["eventName"] == "coupon_applied"
    else:
        with pytest.raises(Filtered, match=r"^consent: "):
            get_destination("wigzo", settings).handle(message)


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"eventMappings": {"Purchase": "Order Finished"}}, r"eventMappings .*not a Segment spec event"),
        ({"customEventNames": {"Hello": "add_to_cart"}}, r"one of the vendor's own event keys"),
        ({"fieldMappings": {"shoeSize": "properties.size"}}, r"fieldMappings names 'shoeSize'"),
        ({"fieldMappings": {"email": "contact email"}}, r"fieldMappings .*not a Segment path"),
        ({"allowedEvents": "Ping", "blockedEvents": [3]}, r"blockedEvents"),
    ],
)
def test_malformed_settings_name_the_key_and_never_a_secret(settings: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error) as caught:
        get_destination("wigzo", {**WIGZO, **settings})
    assert "org-shape-1" not in str(caught.value)


def test_through_destinations_toml_and_send(tmp_path: Path) -> None:
    with RecordingServer() as vendor:
        toml = tmp_path / "destinations.toml"
        toml.write_text(f"""
[outbox]
path = "{tmp_path / "outbox.sqlite3"}"
[destinations.shop]
type = "wigzo"
orgToken = "org-shape-1"
baseUrl = "{vendor.url}"
blockedEvents = ["Debug Ping"]
eventMappings = {{ "Add To Cart" = "Product Added" }}
""")
        messages = [
            {"type": "track", "event": "Debug Ping", "userId": "u1", "messageId": "m1"},
            {"type": "track", "event": "Add To Cart", "userId": "u1", "messageId": "m2",
             "properties": {"product_id": "p1", "url": "https://shop.example/p1"}},
        ]  # fmt: skip
        stdin = "\n".join(json.dumps(m) for m in messages)
        res = subprocess.run([sys.executable, "-m", "destinations", "send", "--config", str(toml), "--quiet"],
                             input=stdin, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert [r.json["eventName"] for r in vendor.received] == ["add_to_cart"]


def test_through_the_server_and_a_rudder_server_config(tmp_path: Path) -> None:
    with RecordingServer() as sink:
        shop = {"type": "segmentify", "apiKey": "sk-seg-11aa22bb33cc", "dataCenterUrl": sink.url}
        shop["blockedEvents"] = ["Debug Ping"]
        raw = {"outbox": {"path": str(tmp_path / "o2.sqlite3")}, "server": {"write_keys": [WRITE_KEY]},
               "destinations": {"shop-segmentify": shop}}  # fmt: skip
        config = parse_config(raw, environ={})
        with live(config) as url:
            batch = [{"type": "track", "event": e, "userId": "u", "context": {"sessionId": "s"}}
                     for e in ("Debug Ping", "Coupon Applied")]  # fmt: skip
            assert httpx.post(f"{url}/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, "")).status_code == 200
            assert wait_for(lambda: len(events_of(sink, "segmentify")) == 1)
            assert [e["type"] for e in events_of(sink, "segmentify")] == ["Coupon Applied"]
            # rudder-server's /v0 with the settings in destination.Config.
            message = rudder_message("Debug Ping")
            event = processor_event("segmentify", message, 1, config={**SEGMENTIFY, "blockedEvents": ["Debug Ping"]})
            res = httpx.post(f"{url}/v0/destinations/segmentify", content=json.dumps([event]), headers=RUDDER_HEADERS)
            [item] = res.json()
            assert item["statusCode"] == 298
            assert "blockedEvents" in item["error"]
    assert config.destinations["shop-segmentify"].shaping.blocked == frozenset({"Debug Ping"})


@pytest.mark.parametrize(
    "settings",
    [
        {"allowedEvents": [{"name": "Only This"}]},  # not an {"eventName"} row: refused, never "allow all"
        {"allowedEvents": ""},
        {"consentCategories": [{"oneTrustCookieCategory": "Marketing"}]},
        {"customEventNames": [{"from": None, "to": None}]},
        {"customEventNames": {"X": " "}},
        {"eventMappings": {"": "Product Added"}},
        {"eventMappings": {"ATC": "Product Added", "atc": "Order Completed"}},
    ],
)
def test_values_that_would_silently_change_meaning_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        get_destination("wigzo", {**WIGZO, **settings})


@pytest.mark.parametrize(
    "context",
    [
        {"consentManagement": {"allowedConsentIds": [["Marketing"]], "deniedConsentIds": []}},
        {"consentManagement": {"allowedConsentIds": [{"id": "Marketing"}]}},
        {"consentManagement": "yes"},
        {"consent": {"categoryPreferences": "yes"}},
        {"consentManagement": {"allowedConsentIds": ["Marketing"], "deniedConsentIds": "Marketing"}},
    ],
)
def test_consent_that_cannot_be_read_grants_nothing(context: dict[str, Any]) -> None:
    settings = {**WIGZO, "consentCategories": ["Marketing"]}
    with pytest.raises(Filtered, match=r"^consent: "):
        get_destination("wigzo", settings).handle({"type": "track", "event": "X", "userId": "u", "context": context})


def test_a_qualified_field_mapping_stays_with_its_event() -> None:
    settings = {**SEGMENTIFY, "fieldMappings": {"PRODUCT_VIEW.pageUrl": "properties.link"}}
    page = {"type": "page", "userId": "u", "context": {"sessionId": "s", "page": {"url": "https://shop.example/"}},
            "properties": {"link": "https://elsewhere.example/"}}  # fmt: skip
    assert one("segmentify", settings, page)["pageUrl"] == "https://shop.example/"
    # Unqualified, every event that declares it reads the path, and nothing falls back.
    every = {**SEGMENTIFY, "fieldMappings": {"fullName": "traits.display_name"}}
    identify = {"type": "identify", "userId": "u", "context": {"sessionId": "s"},
                "traits": {"firstName": "Ann", "lastName": "Lee"}}  # fmt: skip
    assert "fullName" not in one("segmentify", every, identify)
    # traits.x also reads context.traits, where every call may carry traits.
    wigzo = {**WIGZO, "fieldMappings": {"email": "traits.contact_email"}}
    rudder_identify = {"type": "identify", "userId": "u", "context": {"traits": {"contact_email": "c@example.com"}}}
    assert one("wigzo", wigzo, rudder_identify)["email"] == "c@example.com"
    assert "contact_email" not in one("wigzo", wigzo, rudder_identify)


def test_a_required_field_mapped_to_an_absent_path_is_refused_naming_it() -> None:
    settings = {**SEGMENTIFY, "fieldMappings": {"CHECKOUT.purchase.totalPrice": "properties.grand_total"}}
    order = {"type": "track", "event": "Order Completed", "userId": "u", "context": {"sessionId": "s"},
             "properties": {"order_id": "o", "products": [{"product_id": "p", "price": 10}]}}  # fmt: skip
    with pytest.raises(InvalidMessage, match=r"properties\.grand_total is required by Segmentify"):
        get_destination("segmentify", settings).handle(order)


def test_a_rudder_config_with_a_lone_surrogate_is_no_500(tmp_path: Path) -> None:
    with live(make_config(tmp_path, "http://127.0.0.1:9", kinds=(), secret=None), deliver=False) as url:
        event = processor_event("wigzo", rudder_message("Coupon Applied"), 1,
                                config={"orgToken": "t", "blockedEvents": ["\ud800"]})  # fmt: skip
        res = httpx.post(f"{url}/v0/destinations/wigzo", content=json.dumps([event]), headers=RUDDER_HEADERS)
        assert res.status_code == 200
        [item] = res.json()
        # A name that is no text is a bad Config: that event fails as a configuration error, the call does not.
        assert item["statusCode"] == 400
        assert "blockedEvents" in item["error"]


def test_a_rule_over_mapped_fields_names_the_mapped_paths() -> None:
    settings = {**WIGZO, "fieldMappings": {"email": "traits.contact_email", "phone": "traits.mobile"}}
    with pytest.raises(
        InvalidMessage, match=r"^identify: traits\.contact_email or traits\.mobile is required by Wigzo"
    ):
        get_destination("wigzo", settings).handle({"type": "identify", "userId": "u", "traits": {"email": "x@y.z"}})

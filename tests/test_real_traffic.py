"""MAPPINGS "Real traffic" across every destination: the cases an adversarial pass found, each pinned."""

from __future__ import annotations

import json
from typing import Any

import pytest

from destinations import ConfigurationError, Filtered, InvalidMessage, get_destination
from destinations.base import browser_host, http_url, origin_of
from destinations.config import parse_config

SETTINGS: dict[str, dict[str, Any]] = {
    "segmentify": {"apiKey": "SECRET-K1", "dataCenterUrl": "https://dce1.segmentify.com"},
    "dengage": {"apiKey": "SECRET-K2", "dataCenterUrl": "https://dce1.dengage.example"},
    "wigzo": {"orgToken": "SECRET-O", "token": "SECRET-T"},
    "esputnik": {"apiKey": "SECRET-E"},
}
ALL = sorted(SETTINGS)


def handle(name: str, message: dict[str, Any]) -> Any:
    return get_destination(name, SETTINGS[name]).handle_with_warnings(message)


def body(name: str, message: dict[str, Any]) -> Any:
    (request,), _ = handle(name, message)
    return request.json[0] if isinstance(request.json, list) else request.json


@pytest.mark.parametrize("name", ALL)
def test_a_lone_surrogate_in_the_event_name_is_refused_naming_event(name: str) -> None:
    with pytest.raises(InvalidMessage, match=r"^track: event holds a lone surrogate") as caught:
        handle(name, {"type": "track", "userId": "u", "event": "x\ud800"})
    str(caught.value).encode("utf-8")  # the text itself can be printed and logged


@pytest.mark.parametrize("name", ALL)
def test_fields_no_request_uses_never_refuse_a_message(name: str) -> None:
    context = {"ip": ["1.2.3.4"], "device": {"id": {"x": 1}}, "os": {"version": [1]}, "page": "home"}
    message = {"type": "track", "userId": "u", "event": "Foo Happened", "messageId": ["m"], "context": context}
    message["context"]["traits"] = {"email": "a@example.com"}
    (request,), warnings = handle(name, message)
    assert request.json
    assert warnings == []


@pytest.mark.parametrize("name", ALL)
def test_keys_with_lone_surrogates_never_reach_a_warning_text(name: str) -> None:
    message = {"type": "track", "userId": "u", "event": "Foo", "properties": {"k\ud800": {"a": "\udc00"}, "ok": 1}}
    message["context"] = {"traits": {"email": "a@example.com"}}
    _, warnings = handle(name, message)
    assert [w.path for w in warnings] == ["properties"]
    for w in warnings:
        str(w).encode("utf-8")


def test_traits_win_over_context_traits_in_any_spelling() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "traits": {"firstName": "Own", "createdAt": "2020-01-01", "email": "own@example.com", "phone": None},
        "context": {"traits": {"first_name": "Ctx", "created_at": "1999-09-09", "phone": "+90555"}},
    }
    wigzo = body("wigzo", message)
    assert (wigzo["firstName"], wigzo["createdAt"], wigzo["phone"]) == ("Own", "2020-01-01", "+90555")
    segmentify = body("segmentify", message)
    assert (segmentify["fullName"], segmentify["memberSince"]) == ("Own", "01.01.2020")
    esputnik = body("esputnik", message)
    assert esputnik["firstName"] == "Own"
    assert esputnik["channels"] == [{"type": "email", "value": "own@example.com"}, {"type": "sms", "value": "+90555"}]


def test_a_null_trait_does_not_hide_context_traits() -> None:
    message = {"type": "identify", "userId": "u1", "traits": {"email": None}}
    message["context"] = {"traits": {"email": "ctx@example.com"}}
    assert body("wigzo", message)["email"] == "ctx@example.com"
    assert body("segmentify", message)["email"] == "ctx@example.com"


def test_identify_errors_name_traits_not_context_traits() -> None:
    with pytest.raises(InvalidMessage, match=r"^identify: traits\.username is required by Segmentify"):
        handle("segmentify", {"type": "identify", "anonymousId": "a1", "traits": {}})


@pytest.mark.parametrize("name", ["wigzo", "segmentify"])
def test_several_products_and_no_product_id_is_an_error_saying_so(name: str) -> None:
    message = {
        "type": "track",
        "userId": "u",
        "event": "Product Added",
        "properties": {"products": [{"id": "A"}, {"id": "B"}]},
    }
    message["context"] = {"page": {"url": "https://shop.example/p"}}
    with pytest.raises(InvalidMessage, match=r"properties\.product_id .* properties\.products has 2 items"):
        handle(name, message)


@pytest.mark.parametrize(
    ("key", "value", "segmentify", "wigzo"),
    [
        # Segmentify reads birthday as a date; Wigzo passes it along as another trait, which must be sendable.
        ("birthday", int("9" * 400), ["traits.birthday"], ["traits.birthday"]),
        ("birthday", True, ["traits.birthday"], []),
        ("createdAt", -(10**19), ["traits.createdAt"], ["traits.createdAt"]),
        ("createdAt", 10**15, ["traits.createdAt"], ["traits.createdAt"]),
    ],
)
def test_dates_out_of_range_are_left_out_with_a_warning(
    key: str, value: Any, segmentify: list[str], wigzo: list[str]
) -> None:
    message = {"type": "identify", "userId": "u", "traits": {"email": "a@example.com", key: value}}
    assert [w.path for w in handle("segmentify", message).warnings] == segmentify
    assert [w.path for w in handle("wigzo", message).warnings] == wigzo


def test_a_line_item_sum_with_an_unreadable_price_is_never_a_total() -> None:
    products = [{"product_id": "A", "price": 10}, {"product_id": "B", "price": "ten"}]
    message = {"type": "track", "userId": "u", "event": "Checkout Started", "properties": {"products": products}}
    message["context"] = {"sessionId": "s"}
    # Segmentify's totalPrice is required: refused, naming the price that could not be read.
    with pytest.raises(InvalidMessage, match=r"properties\.products\[1\]\.price must be a number .* requires it"):
        handle("segmentify", message)
    # Wigzo's totals are optional: left out, with one warning per field.
    message["properties"]["checkout_id"] = "c1"
    (request,), warnings = handle("wigzo", message)
    assert "total_price" not in request.json["eventval"]
    assert "total_line_items_price" not in request.json["eventval"]
    assert {w.field for w in warnings} >= {"checkout_started.total_price", "checkout_started.total_line_items_price"}


def test_an_unreadable_optional_value_is_left_out_not_defaulted() -> None:
    message = {"type": "track", "userId": "u", "event": "Product Added", "context": {"sessionId": "s"}}
    message["properties"] = {"product_id": "P", "quantity": "lots"}
    event = body("segmentify", message)
    assert "quantity" not in event


@pytest.mark.parametrize("name", ["🛒", "€", "!!!"])
def test_esputnik_refuses_a_name_with_no_letter_or_digit(name: str) -> None:
    message = {"type": "track", "userId": "u", "event": name}
    with pytest.raises(InvalidMessage, match=r": event must contain a letter or digit"):
        handle("esputnik", message)
    message["integrations"] = {"eSputnik": {"eventTypeKey": "cartEmoji"}}
    assert body("esputnik", message)["eventTypeKey"] == "cartEmoji"


def test_wigzo_created_at_is_iso_for_early_years() -> None:
    message = {"type": "track", "userId": "u", "event": "Order Completed", "timestamp": "0270-03-05T00:00:00Z"}
    message["properties"] = {"order_id": "o", "products": [{"product_id": "p"}]}
    assert body("wigzo", message)["eventval"]["created_at"] == "0270-03-05T00:00:00Z"


def test_origin_setting_is_idna_encoded_and_must_be_an_origin() -> None:
    settings = {**SETTINGS["segmentify"], "origin": "https://магазин.example"}
    message = {"type": "page", "userId": "u", "context": {"sessionId": "s"}}
    (request,) = get_destination("segmentify", settings).handle(message)
    assert request.headers["Origin"] == "https://xn--80aairftm.example"
    with pytest.raises(ConfigurationError, match=r"origin must be an origin, scheme://host\[:port\], without a path"):
        get_destination("segmentify", {**settings, "origin": "https://shop.example/some/path"})


def test_a_page_on_a_host_of_symbols_gets_the_origin_a_browser_sends() -> None:
    """`i❤.ws`: a name IDNA 2008 refuses and browsers take (UTS 46), sending `Origin: https://xn--i-7iq.ws`."""
    message = {"type": "page", "userId": "u", "context": {"sessionId": "s", "page": {"url": "https://i❤.ws/p"}}}
    (request,), _ = handle("segmentify", message)
    assert request.headers["Origin"] == "https://xn--i-7iq.ws"
    assert request.json[0]["pageUrl"] == "https://i❤.ws/p"


@pytest.mark.parametrize(
    ("host", "sent"),
    [("i❤.ws", "xn--i-7iq.ws"), ("I❤.WS", "xn--i-7iq.ws"), ("i❤.straße.de", "xn--i-7iq.xn--strae-oqa.de"),
     ("a\u200d❤.ws", None), ("\u0301❤.ws", None)],
)  # fmt: skip
def test_a_host_of_symbols_is_encoded_as_browsers_do_and_only_for_headers(host: str, sent: str | None) -> None:
    """UTS 46 nontransitional, as the WHATWG URL standard reads a host (`straße` stays `ß`, unlike IDNA 2003; a
    joiner out of context and a leading mark are refused). Only for what a browser sends (Origin, cors_origins):
    a base URL on such a host is refused, as requests and httpx, which encode by IDNA 2008, cannot send to it."""
    assert browser_host(host) == sent
    assert origin_of(f"https://{host}/p") == (f"https://{sent}" if sent else None)
    with pytest.raises(ValueError, match="must have a valid host name"):
        http_url(f"https://{host}")
    if sent:
        config = parse_config({"server": {"cors_origins": [f"https://{host}"]}}, environ={})
        assert config.server.cors_origins == [f"https://{sent}"]


@pytest.mark.parametrize("url", ["http://exa\x00mple.com/", "http://exa mple.com/", "http://[::1", "http://h:99999/"])
def test_a_page_url_no_header_can_carry_gives_no_origin(url: str) -> None:
    message = {"type": "page", "userId": "u", "context": {"sessionId": "s", "page": {"url": url}}}
    (request,), _ = handle("segmentify", message)
    assert "Origin" not in request.headers


def test_huge_python_ints_are_not_numbers() -> None:
    products = [{"product_id": "A", "price": 10**5000, "quantity": 1}]
    message = {
        "type": "track",
        "userId": "u",
        "event": "Order Completed",
        "properties": {"order_id": "o", "products": products},
    }
    message["context"] = {"traits": {"email": "a@example.com"}, "sessionId": "s"}
    for name in ALL:
        try:
            (request,), _ = handle(name, message)
        except (InvalidMessage, Filtered) as exc:
            assert not getattr(exc, "internal", False), exc
        else:
            json.dumps(request.to_dict())


@pytest.mark.parametrize("products", [None, []])
def test_a_checkout_without_products_says_one_is_needed(products: Any) -> None:
    """Absent or sent empty, the product list of a checkout step past the basket needs one product at least."""
    message = {"type": "track", "userId": "u", "event": "Payment Info Entered", "context": {"sessionId": "s"},
               "properties": {"checkout_id": "c1", "revenue": 10, "products": products}}  # fmt: skip
    with pytest.raises(InvalidMessage) as info:
        handle("segmentify", message)
    assert info.value.path == "properties.products"
    assert str(info.value) == (
        "Payment Info Entered: properties.products is required by Segmentify CHECKOUT (productList), one product at"
        " least"
    )

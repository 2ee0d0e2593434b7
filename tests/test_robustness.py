"""Nothing but InvalidMessage or Filtered escapes `handle`, for any JSON-like input."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from destinations import Filtered, InvalidMessage, get_destination
from destinations.demo import shop_session
from destinations.registry import BUILT_IN

# Settings that validate for every built-in destination; each takes the keys it knows.
SAMPLE_SETTINGS: dict[str, dict[str, Any]] = {
    "segmentify": {"apiKey": "k", "dataCenterUrl": "https://dce1.segmentify.com"},
    "dengage": {"apiKey": "k", "dataCenterUrl": "https://dce1.dengage.example"},
    "wigzo": {"orgToken": "o", "token": "t"},
    "esputnik": {"apiKey": "k"},
}


def _deep(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


# The odd values real traffic carries (MAPPINGS "Real traffic": no internal errors for odd values).
ODD = [
    "\ud800", "x\udfffy", "0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00", "0001-01-01", "http://[::1",
    "https://магазин.example/p?q=1", "http://host:99999/", "Sipariş Tamamlandı", "1.0000", "17/05/1990",
    1700000000, 1700000000000, 10**30, -(10**20),
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", " 12 ", "3.5", "NaN", "inf", "2026-11-20T10:00:00Z", "not a date", "https://x.example/p"]),
    st.sampled_from(ODD),
    st.sampled_from([_deep(40), _deep(300), [_deep(200)]]),
)
json_like = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
product_keys = st.sampled_from(
    ["product_id", "productId", "id", "sku", "name", "price", "quantity", "url", "image_url", "category",
     "currency", "in_stock", "variant_id", "brand", "old_price", "colors", "discount", "cart_id", "checkout_id"]
)  # fmt: skip
product = st.dictionaries(product_keys, json_like, max_size=8)


def _as_typed(name: str, case: int, spaces: int) -> str:
    """A name as people type it: any case, spaces around and between the words."""
    name = [name, name.lower(), name.upper(), name.title()][case % 4]
    return " " * (spaces % 2) + name.replace(" ", " " * (1 + spaces % 3)) + " " * (spaces % 2)


events = st.builds(
    _as_typed,
    st.sampled_from(
        ["Product Viewed", "Product Clicked", "Product Added", "Product Removed", "Cart Viewed", "Checkout Started",
         "Payment Info Entered", "Order Completed", "Completed Order", "Signed Up", "Signed In", "Signed Out",
         "Product Added to Wishlist", "Products Searched", "Product List Viewed", "Custom Thing", "",
         "Cart Updated", "AddToCart", "Sipariş Tamamlandı", "Заказ Оформлен", "!!!", "View", "page viewed"]
    ),
    st.integers(0, 3),
    st.integers(0, 5),
)  # fmt: skip
types = st.builds(
    _as_typed, st.sampled_from(["track", "page", "screen", "identify", "group", "alias"]), st.integers(0, 3),
    st.integers(0, 1),
)  # fmt: skip
trait_keys = st.sampled_from(
    ["email", "phone", "name", "firstName", "last_name", "birthday", "createdAt", "address", "age", "username"]
)
properties = st.one_of(
    json_like,
    st.fixed_dictionaries(
        {},
        optional={
            "products": st.one_of(json_like, st.lists(st.one_of(product, json_like), max_size=3)),
            "total": json_like,
            "revenue": json_like,
            "order_id": json_like,
            "query": json_like,
            "url": json_like,
        },
    ).flatmap(lambda fixed: product.map(lambda p: {**p, **fixed})),
)
context = st.one_of(
    json_like,
    st.fixed_dictionaries(
        {},
        optional={
            "page": st.one_of(json_like, st.dictionaries(st.sampled_from(["url", "referrer", "path"]), json_like)),
            "traits": st.one_of(json_like, st.dictionaries(trait_keys, json_like)),
            "os": json_like,
            "device": json_like,
            "locale": json_like,
            "userAgent": json_like,
            "sessionId": json_like,
            "campaign": json_like,
        },
    ),
)
messages = st.one_of(
    json_like,
    st.fixed_dictionaries(
        {"type": st.one_of(types, json_like)},
        optional={
            "event": st.one_of(events, json_like),
            "userId": st.one_of(st.text(max_size=6), json_like),
            "anonymousId": json_like,
            "properties": properties,
            # Traits in either place, or both: identify's traits and every call's context.traits.
            "traits": st.one_of(json_like, st.dictionaries(trait_keys, json_like)),
            "context": context,
            "integrations": st.one_of(
                json_like, st.dictionaries(st.sampled_from(["All", "Segmentify", "Wigzo"]), json_like)
            ),
            "timestamp": json_like,
            "originalTimestamp": json_like,
            "name": json_like,
            "messageId": json_like,
        },
    ),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages, name=st.sampled_from(sorted(BUILT_IN)))
def test_only_package_errors_escape_handle(message: Any, name: str) -> None:
    destination = get_destination(name, SAMPLE_SETTINGS[name])
    try:
        requests, warnings = destination.handle_with_warnings(message)
    except InvalidMessage as exc:
        assert not exc.internal, f"mapping bug: {exc}"
        assert str(exc).split(":", 1)[0], "the error names the event"
        str(exc).encode("utf-8")  # every error can be printed, logged and stored
    except Filtered as exc:
        assert exc.reason
    else:
        for warning in warnings:
            str(warning).encode("utf-8")
            assert warning.path
        assert isinstance(requests, list)
        for request in requests:
            assert request.url.startswith("https://")
            assert "?" not in request.url
            # What is sent must be standard JSON in strict UTF-8 (no NaN, no lone surrogate), as orjson
            # stores it and a vendor reads it; headers must be ASCII to travel at all (an IDNA Origin).
            json.dumps(request.to_dict(), allow_nan=False, ensure_ascii=False).encode("utf-8")
            for value in request.headers.values():
                value.encode("ascii")


# Near-valid messages reach deep into the mappers: a real shop session with a few fields broken.
BASES = list(shop_session(1))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


def _mutate(message: Any, path: tuple[Any, ...], replacement: Any, delete: bool) -> Any:
    message = copy.deepcopy(message)
    parent = message
    for part in path[:-1]:
        parent = parent[part]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return message


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(sorted(BUILT_IN)), base=st.sampled_from(BASES))
def test_near_valid_messages_only_raise_package_errors(data: st.DataObject, name: str, base: dict[str, Any]) -> None:
    message = base
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        paths = _paths(message)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        message = _mutate(message, path, data.draw(json_like), data.draw(st.booleans()))
    test_only_package_errors_escape_handle.hypothesis.inner_test(message=message, name=name)  # type: ignore[attr-defined]


def test_the_unbroken_session_maps_for_every_destination() -> None:
    for name in BUILT_IN:
        destination = get_destination(name, SAMPLE_SETTINGS[name])
        sent = 0
        for message in BASES:
            with contextlib.suppress(Filtered):
                sent += len(destination.handle(message))
        assert sent >= len(BASES) // 2, name


def test_non_finite_numbers_never_make_invalid_json() -> None:
    """Python's json module reads NaN and Infinity; what goes to a vendor must still be standard JSON."""
    weird = {"x": float("inf"), "y": {"z": float("nan")}, "w": [float("-inf")], "ok": 1}
    for kind in ("track", "page", "identify"):
        message: dict[str, Any] = {"type": kind, "userId": "u", "traits": {"email": "a@b.co", **weird}}
        message |= {"event": "Coupon Applied", "properties": {"url": "https://shop.example/", **weird}}
        for name in BUILT_IN:
            try:
                requests = get_destination(name, SAMPLE_SETTINGS[name]).handle(message)
            except Filtered:
                continue
            except InvalidMessage as exc:
                assert not exc.internal, f"mapping bug: {exc}"
                continue
            for request in requests:
                json.dumps(request.to_dict(), allow_nan=False)

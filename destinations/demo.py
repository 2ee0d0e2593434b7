"""`destinations demo`: the whole product on embedded defaults, on this machine only.

It starts the intake server on a free loopback port with a temporary outbox, and a local recording
server standing in for all four vendors (every destination's URL points at it). analytics-python, as a
real client, sends a shop session for several users to the server; the demo waits until every
request is delivered, then prints what each vendor received and writes every request to a JSON Lines
file. `--offline` only maps the session (no server, no sockets).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigurationError, Filtered, InvalidMessage
from .registry import destination_types, get_destination

# Example settings per built-in destination: placeholders, never real credentials.
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "segmentify": {"apiKey": "demo-segmentify-key", "dataCenterUrl": "https://dce1.segmentify.com"},
    "dengage": {"apiKey": "demo-dengage-key", "dataCenterUrl": "https://dce1.dengage.example"},
    "wigzo": {"orgToken": "demo-org-token", "token": "demo-token"},
    "esputnik": {"apiKey": "demo-esputnik-key"},
}

SHOP = "https://www.exampleshop.com"
PRODUCTS = [
    {"product_id": "EXAMPLE_PRODUCT_1", "sku": "EP-1", "name": "Trail Runner", "price": 349.99, "quantity": 2,
     "category": "Men > Sports > Shoes", "brand": "Example Brand", "url": f"{SHOP}/example-product-1/",
     "image_url": "https://cdn.exampleshop.com/example-product-1.png"},
    {"product_id": "EXAMPLE_PRODUCT_2", "sku": "EP-2", "name": "Sport Socks", "price": 249.99, "quantity": 1,
     "category": "Men > Sports > Socks", "brand": "Example Brand", "url": f"{SHOP}/example-product-2/",
     "image_url": "https://cdn.exampleshop.com/example-product-2.png"},
]  # fmt: skip


def shop_session(user: int) -> Iterator[dict[str, Any]]:
    """One visitor's session: identify, pages, product views, cart, checkout, order, custom events."""
    user_id, anon = f"user-{user}", f"anon-{user}"
    email = f"customer{user}@example.com"
    n = 0

    def msg(kind: str, path: str, **fields: Any) -> dict[str, Any]:
        nonlocal n
        n += 1
        return {
            "type": kind,
            "messageId": f"demo-{user}-{n}",
            "userId": user_id,
            "anonymousId": anon,
            "timestamp": f"2026-11-20T10:{n:02d}:00.000Z",
            "context": {
                "page": {"url": f"{SHOP}{path}", "referrer": "https://www.google.com/", "path": path},
                "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) Mobile/15E148",
                "locale": "en-US",
                "traits": {"email": email},
            },
            **fields,
        }

    first, second = PRODUCTS
    cart = {"cart_id": f"cart-{user}", "currency": "EUR"}
    yield msg("identify", "/account", traits={"email": email, "phone": f"+90555000{user:04d}", "firstName": "Jane",
                                              "lastName": f"Doe{user}", "birthday": "1990-01-23"})  # fmt: skip
    yield msg("page", "/", name="Home Page", properties={"title": "Example Shop"})
    yield msg("track", "/men/sports", event="Product List Viewed", properties={"category": "Men > Sports"})
    yield msg("track", "/example-product-1/", event="Product Viewed", properties={**first, "currency": "EUR"})
    yield msg("track", "/example-product-1/", event="Product Added",
              properties={**first, **cart, "products": [first]})  # fmt: skip
    yield msg("track", "/example-product-2/", event="Product Added",
              properties={**second, **cart, "products": PRODUCTS})  # fmt: skip
    yield msg("track", "/cart", event="Cart Viewed", properties={**cart, "products": PRODUCTS})
    yield msg("track", "/checkout", event="Checkout Started",
              properties={**cart, "checkout_id": f"chk-{user}", "value": 949.97, "products": PRODUCTS})  # fmt: skip
    yield msg("track", "/checkout", event="Order Completed",
              properties={**cart, "order_id": f"ord-{user}", "checkout_id": f"chk-{user}", "total": 949.97,
                          "shipping": 0, "products": PRODUCTS})  # fmt: skip
    yield msg(
        "track", "/checkout", event="Coupon Applied", properties={"coupon_id": "WELCOME10", "order_id": f"ord-{user}"}
    )


def event_name(request: dict[str, Any]) -> str:
    """A short name for what a vendor request carries (for the summary only)."""
    body = request["json"]
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, dict):
        for key in ("eventTypeKey", "eventName", "name"):
            if isinstance(body.get(key), str):
                step = body.get("step")
                return f"{body[key]} {step}" if isinstance(step, str) else body[key]
    return request["url"].rsplit("/", 1)[-1]


def run_demo(users: int = 3, out_dir: Path | None = None, *, keep_open: bool = False) -> int:
    """The server demo (see the module docstring); `keep_open` keeps it serving until Ctrl-C."""
    from .server.demo import run_server_demo

    return run_server_demo(users=users, out_dir=out_dir, keep_open=keep_open)


def run_offline_demo(users: int = 3, out_dir: Path | None = None) -> int:
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="destinations-demo-"))
    out_path = out_dir / "requests.jsonl"
    messages = [m for u in range(1, users + 1) for m in shop_session(u)]
    print(f"A shop session for {users} users: {len(messages)} Segment messages, mapped for each destination.\n")
    with out_path.open("w", encoding="utf-8") as out:
        for name in sorted(destination_types()):
            settings = DEMO_SETTINGS.get(name)
            if settings is None:
                print(f"{name}: no demo settings (a plugin); skipped\n")
                continue
            try:
                dest = get_destination(name, settings)
            except ConfigurationError as exc:
                print(f"{name}: {exc}\n")
                continue
            sent: Counter[str] = Counter()
            skipped: Counter[str] = Counter()
            for message in messages:
                try:
                    for request in dest.handle(message):
                        data = request.to_dict(masked=True)
                        sent[event_name(data)] += 1
                        out.write(json.dumps({"destination": name, "messageId": message["messageId"], **data}) + "\n")
                except (InvalidMessage, Filtered) as exc:
                    skipped[f"{type(exc).__name__}: {exc}"] += 1
            print(f"{name} ({dest.display_name}): {sum(sent.values())} requests")
            for label, count in sorted(sent.items()):
                print(f"    {count:>3}  {label}")
            for reason, count in sorted(skipped.items()):
                print(f"    {count:>3}  not sent: {reason}")
            print()
    print(f"Every request, as it would be sent: {out_path}")
    return 0

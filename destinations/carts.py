"""Cart contents kept by the package, for destinations whose API wants the whole cart on every change.

Segment's e-commerce spec sends `Product Added` and `Product Removed` with the one product that changed;
eSputnik's `cartUpdated` needs every item each time, and an empty list clears the cart (seed 003). A
destination that declares the `cart` enrichment (`Destination.enrichments`) is handed, for each cart event,
the message with `properties.products` set to the whole cart after that event and `properties.cart_id` to
the cart's id; its handler stays a pure function of what it is handed.

A cart is kept per (destination instance, cart key), the key being `properties.cart_id` ‖
`properties.checkout_id` ‖ the user (userId ‖ anonymousId):

- Product Added (one product): adds it; the same product id and variant add to the quantity (default 1).
- Product Removed (one product): lowers its quantity by the event's; without a quantity, or at 0, the
  line goes.
- Cart Viewed, Checkout Started, and Product Added / Removed whose `products[]` is the cart (beside a
  product id, or several items): the cart becomes `products[]` (without one, it stays as it was).
- Order Completed: the cart (and the user's own cart) is forgotten; the next cart gets a new id.

The cart's id (eSputnik's `recycleStateId`) is made when the cart is: `cart_id` ‖ `checkout_id` ‖
`order_id`, else 32 random letters and digits (seed 003: "a set of random numbers and Latin letters"). A
cart untouched for `ttl` seconds is forgotten. The delivery process keeps carts in the outbox database and
changes them in the transaction that stores the requests they caused; `CartTracker` does the same for a
library user, in memory or in a SQLite file of their own.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import InvalidMessage
from .fields import ITEM_CURRENCY, ITEM_PRICE, PRODUCT_ID, Call, F, Item
from .spec import Message, Track, canonical_event, parse_message

if TYPE_CHECKING:
    from .base import Destination, Handled

CART = "cart"  # the enrichment's name in `Destination.enrichments`
DEFAULT_TTL = 30 * 24 * 3600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS carts (
    instance   TEXT NOT NULL,
    cart_key   TEXT NOT NULL,
    cart_id    TEXT NOT NULL,
    lines      TEXT NOT NULL,
    currency   TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (instance, cart_key)
);
"""

# What a cart line keeps of a product, read through the declared sources (fields.py), in Segment's names.
LINE_FIELDS = (
    F("product_id", *PRODUCT_ID),
    F("variant_id", "product.variant_id"),
    F("quantity", "product.quantity", kind="number"),
    ITEM_PRICE,
    F("name", "product.name"),
    F("category", "product.category"),
    F("discount", "product.discount", kind="number"),
)
_PRODUCT = LINE_FIELDS[0]
CART_KEY = F("cart_key", "properties.cart_id", "properties.checkout_id")
NEW_CART_ID = F("cart_id", "properties.cart_id", "properties.checkout_id", "properties.order_id")
CURRENCY = F("currency", "properties.currency")

# The cart events and what each does.
ADD, REMOVE, REPLACE, CLEAR = "add", "remove", "replace", "clear"
CHANGES = {
    "Product Added": ADD,
    "Product Removed": REMOVE,
    "Cart Viewed": REPLACE,
    "Checkout Started": REPLACE,
    "Order Completed": CLEAR,
}


class Cart(NamedTuple):
    """One cart: its id (eSputnik's recycleStateId), its lines in the order added (Segment product fields:
    product_id, variant_id, quantity, price, name, category, discount), its currency, when it last changed."""

    id: str
    lines: tuple[dict[str, Any], ...]
    currency: str | None
    updated_at: float


# (instance, cart key) -> the cart after the round, or None: forgotten (an order completed it).
Changes = dict[tuple[str, str], Cart | None]


class CartBook:
    """The carts one round of messages touches: read once through `load`, changed in message order, and
    written with the round's requests (`changes`)."""

    def __init__(
        self, load: Callable[[str, str], Cart | None], *, ttl: float = DEFAULT_TTL, now: float | None = None
    ) -> None:
        self._load = load
        self.ttl = ttl
        self.now = time.time() if now is None else now
        self.changes: Changes = {}

    def get(self, instance: str, key: str) -> Cart | None:
        if (instance, key) in self.changes:
            return self.changes[(instance, key)]
        cart = self._load(instance, key)
        return cart if cart is not None and self.now - cart.updated_at <= self.ttl else None

    def hand(self, instance: str, destination: Destination, raw: Mapping[str, Any], parsed: Any) -> Any:
        """The message to hand `destination` (an instance declaring the cart enrichment): for a cart event,
        `raw` with the whole cart after it; else `parsed` as it is. Never raises: a message the cart cannot
        read changes nothing and goes to the destination unchanged, to be refused there with its path."""
        if not isinstance(parsed, Track) or not isinstance(raw, Mapping):
            return parsed
        event = destination.shaping.spec_event(parsed.event) or canonical_event(parsed.event)
        kind = CHANGES.get(event)
        if kind is None:
            return parsed
        call = Call(parsed, {}, destination.settings, destination.display_name)
        visitor = call.visitor_id
        try:
            key = call.read(CART_KEY) or visitor
            if kind == CLEAR:
                for cart_key in {key, visitor}:
                    self.changes[(instance, cart_key)] = None
                return parsed
            cart = self._changed(self.get(instance, key), call, kind)
        except InvalidMessage:  # an unreadable product or key: the destination says what is wrong
            return parsed
        self.changes[(instance, key)] = cart
        properties = {**raw.get("properties", {}), "products": [dict(line) for line in cart.lines],
                      "cart_id": cart.id}  # fmt: skip
        if cart.currency and not properties.get("currency"):
            properties["currency"] = cart.currency
        return {**raw, "properties": properties}

    def _changed(self, cart: Cart | None, call: Call, kind: str) -> Cart:
        if cart is None:
            cart = Cart(call.read(NEW_CART_ID) or uuid.uuid4().hex, (), None, self.now)
        lines = list(cart.lines)
        currency = call.read(CURRENCY)
        whole = call.has_products and (
            kind == REPLACE or call.read(_PRODUCT, Item(call.properties, "properties")) or len(call.products) > 1
        )
        if whole:  # the whole cart, as sent
            lines = [line for item in call.products if (line := _line(call, item))]
        elif kind in (ADD, REMOVE):  # one product, wherever it sits (MAPPINGS "Real traffic")
            product = call.product()
            line = _line(call, product)
            if line is not None:
                lines = _added(lines, line) if kind == ADD else _removed(lines, line)
            if kind == ADD:
                currency = currency or call.read(ITEM_CURRENCY, product)
        return Cart(cart.id, tuple(lines), currency or cart.currency, self.now)


def _line(call: Call, item: Item) -> dict[str, Any] | None:
    """A product as a cart line: the fields it has, by their Segment names; None without a product id."""
    line = {f.name: value for f in LINE_FIELDS if (value := call.read(f, item)) is not None}
    return line if line.get("product_id") else None


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a["product_id"] == b["product_id"] and a.get("variant_id") == b.get("variant_id")


def _added(lines: list[dict[str, Any]], line: dict[str, Any]) -> list[dict[str, Any]]:
    quantity = line.get("quantity", 1)
    for i, held in enumerate(lines):
        if _same(held, line):
            lines[i] = {**held, **line, "quantity": held.get("quantity", 1) + quantity}
            return lines
    return [*lines, {**line, "quantity": quantity}]


def _removed(lines: list[dict[str, Any]], line: dict[str, Any]) -> list[dict[str, Any]]:
    quantity = line.get("quantity")
    out = []
    for held in lines:
        if _same(held, line):
            left = held.get("quantity", 1) - quantity if quantity else 0
            if left > 0:
                out.append({**held, "quantity": left})
            continue
        out.append(held)
    return out


# --- storage ----------------------------------------------------------------------------------------


def load_cart(db: sqlite3.Connection, instance: str, key: str) -> Cart | None:
    row = db.execute(
        "SELECT cart_id, lines, currency, updated_at FROM carts WHERE instance = ? AND cart_key = ?", (instance, key)
    ).fetchone()
    return None if row is None else Cart(row[0], tuple(json.loads(row[1])), row[2], row[3])


def save_carts(db: sqlite3.Connection, changes: Changes) -> None:
    """Write a round's cart changes inside the caller's transaction."""
    db.executemany(
        "DELETE FROM carts WHERE instance = ? AND cart_key = ?", [key for key, cart in changes.items() if cart is None]
    )
    db.executemany(
        "INSERT OR REPLACE INTO carts (instance, cart_key, cart_id, lines, currency, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(*key, c.id, json.dumps(c.lines), c.currency, c.updated_at) for key, c in changes.items() if c is not None],
    )


def prune_carts(db: sqlite3.Connection, ttl: float, now: float) -> int:
    return db.execute("DELETE FROM carts WHERE updated_at < ?", (now - ttl,)).rowcount


class CartTracker:
    """Carts for a library user: `tracker.handle(destination, message)` is `destination.handle(message)`
    with the whole cart handed to a destination that asks for it (eSputnik), the cart kept in memory or in
    a SQLite file (`path`). One tracker per set of carts; thread-safe; the instance name keys the carts
    when one tracker serves several instances of a destination."""

    def __init__(self, path: str | Path | None = None, *, ttl: float = DEFAULT_TTL) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._memory: dict[tuple[str, str], Cart] = {}
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)

    def handle_with_warnings(self, destination: Destination, message: Any, *, instance: str = "") -> Handled:
        """The destination's `handle_with_warnings`, with the cart applied first; raises what it raises (the
        cart has changed all the same: the shopper did change it)."""
        instance = instance or destination.name
        with self._lock:
            book = CartBook(self._load, ttl=self.ttl)
            try:
                parsed: Any = parse_message(message) if not isinstance(message, Message) else message
            except InvalidMessage:
                parsed = message
            handed = book.hand(instance, destination, message, parsed) if CART in destination.enrichments else message
            self._save(book.changes)
        return destination.handle_with_warnings(handed)

    def handle(self, destination: Destination, message: Any, *, instance: str = "") -> list[Any]:
        return self.handle_with_warnings(destination, message, instance=instance).requests

    def cart(self, instance: str, key: str) -> Cart | None:
        """The cart kept for (instance, cart key), if any and not expired."""
        with self._lock:
            return CartBook(self._load, ttl=self.ttl).get(instance, key)

    def _load(self, instance: str, key: str) -> Cart | None:
        return self._memory.get((instance, key)) if self._db is None else load_cart(self._db, instance, key)

    def _save(self, changes: Changes) -> None:
        if self._db is None:
            for key, cart in changes.items():
                if cart is None:
                    self._memory.pop(key, None)
                else:
                    self._memory[key] = cart
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            save_carts(self._db, changes)
            prune_carts(self._db, self.ttl, time.time())
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

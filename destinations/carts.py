"""Cart contents kept by the package, for destinations whose API wants the whole cart on every change.

Segment's e-commerce spec sends `Product Added` and `Product Removed` with the one product that changed;
eSputnik's `cartUpdated` needs every item each time, and an empty list clears the cart (seed 003). A
destination that declares the `cart` enrichment (`Destination.enrichments`) is handed, for each cart event,
the message with `properties.products` set to the whole cart after that event and `properties.cart_id` to
the cart's id; its handler stays a pure function of what it is handed.

A cart is kept per (destination instance, cart key), the key being `properties.cart_id` ‖
`properties.checkout_id` ‖ the user (userId ‖ anonymousId), each kind apart (`cart:…`, `user:…`,
`anonymous:…`); a shopper who logs in takes their anonymous cart along.

- Product Added (one product): adds it; the same product id and variant add to the quantity (default 1).
- Product Removed (one product): lowers its quantity by the event's; without a quantity, or at 0, the
  line goes.
- Cart Viewed, Checkout Started, and Product Added / Removed whose `products[]` is the cart (beside a
  product id, or several items): the cart becomes `products[]`, each item as sent.
- Order Completed: the cart (and the shopper's user and anonymous carts) is forgotten; the next cart gets a
  new id.

Only what the instance takes changes its carts (`Destination.admits`: integrations, consent and event
shaping), and a resend (a messageId already in the outbox) changes nothing again. Where no cart is known and
the event brings none (a removal, a Cart Viewed without products), nothing is made up: the stateless rule
applies, since an empty cartUpdated would clear the shopper's cart at the vendor.

The cart's id (eSputnik's `recycleStateId`) is made when the cart is: `cart_id` ‖ `checkout_id` ‖
`order_id`, else 32 random hexadecimal letters and digits (seed 003: "a set of random numbers and Latin
letters"). A cart untouched for `ttl` seconds is forgotten. The delivery process keeps carts in the outbox
database and changes them in the transaction that stores the requests they caused; `CartTracker` does the
same for a library user, in memory or in a SQLite file of their own.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .base import CART, WHOLE_CART
from .errors import DestinationError
from .fields import CART_IDS, CART_PURCHASE_IDS, ITEM_CURRENCY, ITEM_PRICE, PRODUCT_ID, Call, F, Item, Table
from .spec import Message, Track, canonical_event, has_surrogate, json_text, message_id_of, parse_message

if TYPE_CHECKING:
    from .base import Destination, Handled

DEFAULT_TTL = 30 * 24 * 3600.0
QUANTITY_LIMIT = 10**9

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
CREATE INDEX IF NOT EXISTS carts_updated ON carts (updated_at);
-- The cart events each instance has applied, so that a resend changes no cart again (kept as long as carts).
CREATE TABLE IF NOT EXISTS cart_events (
    instance   TEXT NOT NULL,
    message_id TEXT NOT NULL,
    at         REAL NOT NULL,
    PRIMARY KEY (instance, message_id)
);
CREATE INDEX IF NOT EXISTS cart_events_at ON cart_events (at);
"""

# What identifies a cart line and how many it holds (fields.py sources); the line itself is the product as sent.
_PRODUCT = F("product_id", *PRODUCT_ID)
_VARIANT = F("variant_id", "product.variant_id")
_QUANTITY = F("quantity", "product.quantity", kind="number")
CART_ID = F("cart_id", *CART_IDS)
NEW_CART_ID = F("cart", *CART_PURCHASE_IDS)
CART_CURRENCY = F("currency", "properties.currency")
PRODUCTS = "products"
# A product read from `properties` shares it with the event: these keys are the cart's, not the product's.
_CART_KEYS = Table("cart", CART_ID, NEW_CART_ID).keys_of("properties") | {PRODUCTS}

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
    """One cart: its id (eSputnik's recycleStateId), its lines in the order added (product objects as sent, with
    their quantity now), its currency, and when it last changed (epoch seconds)."""

    id: str
    lines: tuple[dict[str, Any], ...]
    currency: str | None
    updated_at: float


_UNKNOWN: Any = object()

# (instance, cart key) -> the cart after the round, or None: forgotten (an order completed it).
Changes = dict[tuple[str, str], Cart | None]


def keys_of(call: Call) -> tuple[str | None, str | None, str | None]:
    """A message's cart key, user key and anonymous key: `cart:<cart_id ‖ checkout_id>`, `user:<userId>`,
    `anonymous:<anonymousId>` (kinds apart, so a cart id never meets a user id). The cart key is the first
    of the three that the message has."""
    given = call.read(CART_ID)
    message = call.message
    user_id, anonymous_id = (message.userId or "").strip(), (message.anonymousId or "").strip()
    user = f"user:{user_id}" if user_id else None
    anonymous = f"anonymous:{anonymous_id}" if anonymous_id else None
    return (f"cart:{given}" if given else user or anonymous), user, anonymous


class CartBook:
    """The carts one round of messages touches: read once through `load`, changed in message order, and
    written with the round's requests (`changes`). `seen(instance, messageId)` says a message is already in
    the outbox (a resend): it changes no cart again."""

    def __init__(
        self,
        load: Callable[[str, str], Cart | None],
        *,
        seen: Callable[[str, str], bool] | None = None,
        stored: Callable[[str, str], int] | None = None,
        ttl: float = DEFAULT_TTL,
        now: float | None = None,
    ) -> None:
        self._load = load
        self._seen = seen
        self._stored = stored
        self.ttl = ttl
        self.now = time.time() if now is None else now
        self.changes: Changes = {}
        #: The cart events this round applied, (instance, messageId): written with the changes.
        self.applied: list[tuple[str, str]] = []
        self._handled: set[tuple[str, str]] = set()
        self._answers: dict[tuple[str, str], bool] = {}
        self._kinds: dict[tuple[str, str], str | None] = {}

    def resent(self, instance: str, destination: Destination, parsed: Any, message_id: str | None) -> int:
        """For a cart event the instance's carts took in an earlier round: how many of its requests the outbox
        holds (they make the resend a duplicate, as any message sent twice); 0 otherwise."""
        if message_id is None or self._stored is None or (instance, message_id) in self._handled:
            return 0
        if not isinstance(parsed, Track) or self._change(instance, destination, parsed.event) is None:
            return 0  # only cart events are recorded: no lookup for the others
        if not self._was_seen(instance, message_id):
            return 0
        return self._stored(instance, message_id)

    def _change(self, instance: str, destination: Destination, event: str) -> str | None:
        """What an event does to the instance's carts (CHANGES: by the spec event its shaping maps it onto),
        worked out once a round for each (instance, event name): every message asks, twice."""
        key = (instance, event)
        kind = self._kinds.get(key, _UNKNOWN)
        if kind is _UNKNOWN:
            kind = self._kinds[key] = CHANGES.get(destination.shaping.spec_event(event) or canonical_event(event))
        return kind  # type: ignore[no-any-return]

    def _was_seen(self, instance: str, message_id: str) -> bool:
        """`seen`, asked once a message and instance: the round stores nothing before its commit, so the
        answer `resent` got holds for `hand` (a query less for every cart event)."""
        key = (instance, message_id)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = self._seen is not None and self._seen(instance, message_id)
        return answer

    def get(self, instance: str, key: str) -> Cart | None:
        """The cart under `key` as this round has it: None when there is none or it expired."""
        if (instance, key) in self.changes:
            return self.changes[(instance, key)]
        cart = self._load(instance, key)
        return cart if cart is not None and self.now - cart.updated_at <= self.ttl else None

    def hand(
        self, instance: str, destination: Destination, raw: Any, parsed: Any, message_id: str | None = None
    ) -> Any:
        """The message to hand `destination` (an instance declaring the cart enrichment): for a cart event it
        takes, `raw` with `properties.products` the whole cart after it and `properties.cart_id` the cart's id;
        else `parsed` as it is, and the stateless rules apply (also when no cart is known and the event brings
        none: an empty cart would clear the shopper's cart at the vendor). Raises nothing of its own: a message
        the cart cannot read is handed on unchanged, to be refused with its path."""
        if not isinstance(parsed, Track):
            return parsed
        kind = self._change(instance, destination, parsed.event)
        if kind is None or not isinstance(raw, Mapping) or not destination.admits(parsed):
            return parsed
        resend = message_id is not None and (
            (instance, message_id) in self._handled or self._was_seen(instance, message_id)
        )
        if message_id is not None and not resend:
            self._handled.add((instance, message_id))
            self.applied.append((instance, message_id))
        call = Call(parsed, {}, destination.settings, destination.display_name)
        try:
            key, user, anonymous = keys_of(call)
            if key is None:
                return parsed
            if resend:
                # Its change is in the cart already: the cart as it is now goes, and the outbox counts the
                # resend's requests as the duplicates they are (a library caller gets them again).
                cart = self.get(instance, key)
                return parsed if cart is None or kind == CLEAR else _with_cart(raw, parsed, destination, cart)
            if kind == CLEAR:
                for cart_key in {key, user, anonymous} - {None}:
                    self.changes[(instance, cart_key)] = None  # type: ignore[index]
                return parsed
            cart = self.get(instance, key)
            if cart is None and key == user and anonymous:  # the shopper logged in: their cart comes along
                cart = self.get(instance, anonymous)
                if cart is not None:
                    self.changes[(instance, anonymous)] = None
            changed = self._changed(cart, call, kind)
        except DestinationError:  # an unreadable id or product: the destination says what is wrong
            return parsed
        if changed is None:
            return parsed
        self.changes[(instance, key)] = changed
        return _with_cart(raw, parsed, destination, changed)

    def _changed(self, cart: Cart | None, call: Call, kind: str) -> Cart | None:
        """The cart after this event; None when it leaves the stateless rule to decide: no cart is known and
        the event brings none, or its one product cannot be read (no product id; no price on an add)."""
        whole = call.has_products and (
            kind == REPLACE or bool(call.read(_PRODUCT, Item(call.properties, "properties"))) or len(call.products) > 1
        )
        currency = call.read(CART_CURRENCY)
        if whole:  # the whole cart, as sent: every item kept as it came, for the destination to read
            lines = [dict(item.raw) for item in call.products]  # every item as sent (not an object: refused)
            # The currency of the cart as sent, not of the one it replaces.
            currency = currency or next((c for item in call.products if (c := call.read(ITEM_CURRENCY, item))), None)
            made = cart.id if cart else call.read(NEW_CART_ID) or uuid.uuid4().hex
            return Cart(made, tuple(lines), currency, self.now)
        if kind == REPLACE or (cart is None and kind != ADD):
            return cart  # nothing sent to replace it with, or nothing to remove from
        product = call.product()
        line = _line(call, product)
        if line is None or (kind == ADD and call.read(ITEM_PRICE, product) is None):
            return None  # not a product the cart can hold: the destination reports the event as sent
        lines = (
            _added(call, list(cart.lines) if cart else [], line)
            if kind == ADD
            else _removed(call, list(cart.lines) if cart else [], line)
        )
        if kind == ADD:
            currency = currency or call.read(ITEM_CURRENCY, product)
        made = cart.id if cart else call.read(NEW_CART_ID) or uuid.uuid4().hex
        return Cart(made, tuple(lines), currency or (cart.currency if cart else None), self.now)


def _with_cart(raw: Mapping[str, Any], parsed: Track, destination: Destination, cart: Cart) -> dict[str, Any]:
    """`raw` with `properties.products` the whole cart, `properties.cart_id` its id (and its currency where the
    event gives none), and the destination's `wholeCart` option saying products[] is the cart."""
    properties = {**parsed.properties, PRODUCTS: [dict(line) for line in cart.lines], "cart_id": cart.id}
    if cart.currency and not properties.get("currency"):
        properties["currency"] = cart.currency
    integrations = dict(parsed.integrations or {})
    own = integrations.get(destination.display_name)
    integrations[destination.display_name] = {**(own if isinstance(own, Mapping) else {}), WHOLE_CART: True}
    return {**raw, "properties": properties, "integrations": integrations}


def _line(call: Call, item: Item) -> dict[str, Any] | None:
    """A single product as a cart line: its fields as sent, for the destination to read as it reads any
    product (without the cart's own keys when the product is `properties`); None without a product id."""
    if not call.read(_PRODUCT, item):
        return None
    return {k: v for k, v in item.raw.items() if k not in _CART_KEYS}


def _identity(call: Call, line: Mapping[str, Any]) -> tuple[Any, Any]:
    item = Item(line, "cart")
    return call.read(_PRODUCT, item), call.read(_VARIANT, item)


def _quantity(call: Call, line: Mapping[str, Any], default: Any = 1) -> Any:
    value = call.read(_QUANTITY, Item(line, "cart"))
    return default if value is None else value


def _plus(a: Any, b: Any) -> int | float:
    """a + b in decimal, an int when whole (0.1 + 0.2 is 0.3, 1 + 1 is 2); `a` when the sum is past
    QUANTITY_LIMIT (1e308 + 1e308)."""
    total = Decimal(str(a)) + Decimal(str(b))
    if abs(total) > QUANTITY_LIMIT:
        return a  # no cart holds that many: the sum is not taken
    return int(total) if total == total.to_integral_value() else float(total)


def _added(call: Call, lines: list[dict[str, Any]], line: dict[str, Any]) -> list[dict[str, Any]]:
    quantity = _quantity(call, line)
    if quantity <= 0:  # adding nothing, or less than nothing, changes nothing
        return lines
    identity = _identity(call, line)
    for i, held in enumerate(lines):
        if _identity(call, held) == identity:
            lines[i] = {**held, **line, "quantity": _plus(_quantity(call, held), quantity)}
            return lines
    return [*lines, {**line, "quantity": quantity}]


def _removed(call: Call, lines: list[dict[str, Any]], line: dict[str, Any]) -> list[dict[str, Any]]:
    quantity = _quantity(call, line, None)
    identity = _identity(call, line)
    out = []
    for held in lines:
        if _identity(call, held) == identity:
            # Without a quantity, or with 0 or less, the line goes (Segment: the product was removed).
            left = _plus(_quantity(call, held), -quantity) if quantity and quantity > 0 else 0
            if left > 0:
                out.append({**held, "quantity": left})
            continue
        out.append(held)
    return out


# --- storage ----------------------------------------------------------------------------------------


def load_cart(db: sqlite3.Connection, instance: str, key: str) -> Cart | None:
    """The stored cart of (instance, cart key), expired or not; None when there is none."""
    row = db.execute(
        "SELECT cart_id, lines, currency, updated_at FROM carts WHERE instance = ? AND cart_key = ?", (instance, key)
    ).fetchone()
    return None if row is None else Cart(row[0], tuple(json.loads(row[1])), row[2], row[3])


def applied_before(db: sqlite3.Connection, instance: str, message_id: str) -> bool:
    """Whether an instance's carts have taken this message already (a resend)."""
    sql = "SELECT 1 FROM cart_events WHERE instance = ? AND message_id = ?"
    return db.execute(sql, (instance, message_id)).fetchone() is not None


def save_carts(db: sqlite3.Connection, changes: Changes, applied: list[tuple[str, str]], now: float) -> None:
    """Write a round's cart changes, and the cart events it applied, inside the caller's transaction."""
    db.executemany("INSERT OR IGNORE INTO cart_events (instance, message_id, at) VALUES (?, ?, ?)",
                   [(*key, now) for key in applied])  # fmt: skip
    db.executemany(
        "DELETE FROM carts WHERE instance = ? AND cart_key = ?", [key for key, cart in changes.items() if cart is None]
    )
    db.executemany(
        "INSERT OR REPLACE INTO carts (instance, cart_key, cart_id, lines, currency, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(*key, c.id, json_text(c.lines), c.currency, c.updated_at) for key, c in changes.items() if c is not None],
    )


def prune_carts(db: sqlite3.Connection, ttl: float, now: float) -> int:
    """Forget carts untouched for `ttl` seconds, and cart events as old; returns how many carts."""
    db.execute("DELETE FROM cart_events WHERE at < ?", (now - ttl,))
    return db.execute("DELETE FROM carts WHERE updated_at < ?", (now - ttl,)).rowcount


def _message_id(raw: Any) -> str | None:
    """A message's id as the intake knows it (`message_id_of`), so a resend without a messageId changes no cart
    again either; None for one that has no digest (circular, nested too deep: it is refused by its handler)."""
    try:
        return message_id_of(raw)
    except (ValueError, TypeError, RecursionError):
        return None


class CartTracker:
    """Carts for a library user: `tracker.handle(destination, message)` is `destination.handle(message)` with
    the whole cart handed to a destination that asks for it (eSputnik), the carts kept in memory or in a
    SQLite file (`path`). Thread-safe: one call at a time, so each shopper's carts follow the calls' order.
    A message whose messageId (or, without one, the digest of its content: `spec.message_id_of`) the tracker has
    seen lately (the last 100,000) changes no cart again."""

    SEEN = 100_000

    def __init__(self, path: str | Path | None = None, *, ttl: float = DEFAULT_TTL) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._memory: dict[tuple[str, str], Cart] = {}
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._pruned = 0.0
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)

    def handle_with_warnings(self, destination: Destination, message: Any, *, instance: str = "") -> Handled:
        """The destination's `handle_with_warnings` with the cart applied first (`message` a dict or a parsed
        Message); raises what it raises, and the cart has changed all the same (the shopper did change it).
        `instance` names the carts' owner when one tracker serves several instances (default: the type)."""
        instance = instance or destination.name
        with self._lock:
            raw = message.model_dump(exclude_none=True) if isinstance(message, Message) else message
            try:
                parsed: Any = message if isinstance(message, Message) else parse_message(message)
            except DestinationError:
                parsed = message
            handed = message
            mid = _message_id(raw)
            # As the intake does: a messageId no UTF-8 can carry can be recorded nowhere, so no cart takes it, and
            # the message is handed on as it came.
            if CART in destination.enrichments and not (mid and has_surrogate(mid)):
                # In one write transaction from the read on: two processes on one file take turns.
                if self._db is not None:
                    self._db.execute("BEGIN IMMEDIATE")
                try:
                    book = CartBook(self._load, seen=self._was_seen, ttl=self.ttl)
                    book.applied = [] if self._db is None else book.applied
                    handed = book.hand(instance, destination, raw, parsed, mid)
                    self._save(book.changes, book.applied)
                except BaseException:
                    if self._db is not None:
                        self._db.execute("ROLLBACK")
                    raise
                if self._db is not None:
                    self._db.execute("COMMIT")
            return destination.handle_with_warnings(handed)

    def handle(self, destination: Destination, message: Any, *, instance: str = "") -> list[Any]:
        """`handle_with_warnings(...).requests`."""
        return self.handle_with_warnings(destination, message, instance=instance).requests

    def cart(self, instance: str, key: str) -> Cart | None:
        """The cart kept for (instance, cart key: `cart:<id>`, `user:<userId>` or `anonymous:<id>`), if any
        and not expired."""
        with self._lock:
            return CartBook(self._load, ttl=self.ttl).get(instance, key)

    def _was_seen(self, instance: str, message_id: str) -> bool:
        if self._db is not None:  # the file's own record, shared by the processes using it
            return applied_before(self._db, instance, message_id)
        key = (instance, message_id)
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > self.SEEN:
            self._seen.popitem(last=False)
        return False

    def _load(self, instance: str, key: str) -> Cart | None:
        return self._memory.get((instance, key)) if self._db is None else load_cart(self._db, instance, key)

    def _save(self, changes: Changes, applied: list[tuple[str, str]]) -> None:
        now = time.time()
        prune = now - self._pruned > 60  # expired carts go once a minute, not on every message
        if prune:
            self._pruned = now
        if self._db is None:
            for key, cart in changes.items():
                if cart is None:
                    self._memory.pop(key, None)
                else:
                    self._memory[key] = cart
            if prune:
                self._memory = {k: c for k, c in self._memory.items() if now - c.updated_at <= self.ttl}
            return
        save_carts(self._db, changes, applied, now)  # inside the caller's transaction
        if prune:
            prune_carts(self._db, self.ttl, now)

    def close(self) -> None:
        """Close the SQLite file, if any."""
        if self._db is not None:
            self._db.close()

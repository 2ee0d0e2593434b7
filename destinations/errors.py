"""The package's own errors: the only exceptions `Destination.handle` and `get_destination` raise."""

from __future__ import annotations


class DestinationError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidMessage(DestinationError):
    """The message cannot be sent as the vendor requires.

    The text names the event, the field by its Segment path and the rule, so the person reading a
    dead-letter listing knows what to fix at the source.
    """

    def __init__(self, event: str, path: str, rule: str, *, internal: bool = False) -> None:
        event, path, rule = _text(event), _text(path), _text(rule)
        self.event = event
        self.path = path
        self.rule = rule
        # True only for the safety net in `Destination.handle`: a mapping bug, not bad input.
        self.internal = internal
        super().__init__(f"{event}: {path} {rule}" if path else f"{event}: {rule}")


class Filtered(DestinationError):
    """The message is deliberately not sent; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ConfigurationError(DestinationError):
    """Settings or configuration are wrong; `problems` lists one line per bad key."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        super().__init__(message)


class DeliveryError(DestinationError):
    """A request could not be delivered (raised by the delivery layer, never by a handler)."""


def _text(value: str) -> str:
    """`value` with any lone surrogate (a JSON escape that is no character) shown as U+FFFD, so that an
    error or a warning can always be printed, logged and stored."""
    if value.isascii():
        return value
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class MappingWarning:
    """An optional value left out of a vendor request because it could not be read (MAPPINGS "Real traffic").

    Not an exception: the message is still sent. `path` is the Segment path, `rule` what was wrong with
    it, `vendor` the destination's display name and `target` the vendor event and field
    ("PRODUCT_VIEW (oldPrice)"); `field` is the field's stable name ("PRODUCT_VIEW.oldPrice").
    """

    __slots__ = ("event", "path", "rule", "target", "vendor")

    def __init__(self, event: str, path: str, rule: str, vendor: str, target: str) -> None:
        self.event = _text(event)
        self.path = _text(path)
        self.rule = _text(rule)
        self.vendor = vendor
        self.target = target

    @property
    def field(self) -> str:
        """The field's stable name: "PRODUCT_VIEW (oldPrice)" -> "PRODUCT_VIEW.oldPrice" (a metrics label)."""
        event, _, name = self.target.partition(" (")
        return f"{event}.{name.removesuffix(')')}" if name else event

    def __str__(self) -> str:
        return f"{self.event}: {self.path} {self.rule}; left out of {self.vendor} {self.target}"

    def __repr__(self) -> str:
        return f"MappingWarning({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MappingWarning) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

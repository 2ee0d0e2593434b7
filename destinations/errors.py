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


class MappingWarning:
    """An optional value left out of a vendor request because it could not be read (MAPPINGS "Real traffic").

    Not an exception: the message is still sent. `target` is the vendor and its stable field name
    ("Segmentify PRODUCT_VIEW (oldPrice)"); `path` the Segment path; `rule` what was wrong with it.
    """

    __slots__ = ("event", "path", "rule", "target")

    def __init__(self, event: str, path: str, rule: str, target: str) -> None:
        self.event = event
        self.path = path
        self.rule = rule
        self.target = target

    @property
    def field(self) -> str:
        """The field's stable name without the vendor: "PRODUCT_VIEW.oldPrice" (a metrics label)."""
        _, _, what = self.target.partition(" ")
        event, _, name = what.partition(" (")
        return f"{event}.{name.rstrip(')')}" if name else event

    def __str__(self) -> str:
        return f"{self.event}: {self.path} {self.rule}; left out of {self.target}"

    def __repr__(self) -> str:
        return f"MappingWarning({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MappingWarning) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

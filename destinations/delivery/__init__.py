"""Delivery: the sender, the durable outbox and the workers (DESIGN.md section 6)."""

from ..spec import message_id_of  # its home is spec (identity); kept here for callers that import it from here
from .intake import IntakeReport, route
from .outbox import Outbox
from .sender import Outcome, Sender, classify
from .worker import Delivery

__all__ = ["Delivery", "IntakeReport", "Outbox", "Outcome", "Sender", "classify", "message_id_of", "route"]

"""Delivery: the sender, the durable outbox and the workers (DESIGN.md section 6)."""

from .intake import IntakeReport, message_id_of, route
from .outbox import Outbox
from .sender import Outcome, Sender, classify
from .worker import Delivery

__all__ = ["Delivery", "IntakeReport", "Outbox", "Outcome", "Sender", "classify", "message_id_of", "route"]

"""Deliver Segment-spec events to Wigzo, Segmentify, D·engage and eSputnik."""

from .base import Destination, Handled, HttpRequest
from .carts import CartTracker
from .errors import ConfigurationError, DeliveryError, DestinationError, Filtered, InvalidMessage, MappingWarning
from .registry import destination_types, get_destination

__all__ = [
    "CartTracker",
    "ConfigurationError",
    "DeliveryError",
    "Destination",
    "DestinationError",
    "Filtered",
    "Handled",
    "HttpRequest",
    "InvalidMessage",
    "MappingWarning",
    "destination_types",
    "get_destination",
]

__version__ = "0.1.0"

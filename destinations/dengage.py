"""D·engage custom (backend) integration REST API (seed 002).

The seed is the Segmentify protocol under D·engage's name, so the mapping is Segmentify's, table and
all (see segmentify.py). Only the name, the `integrations` key and the data center differ; D·engage
has no default data center, so `dataCenterUrl` is required as it is for Segmentify.
"""

from __future__ import annotations

from .segmentify import SegmentifyDestination


class DengageDestination(SegmentifyDestination):
    name = "dengage"
    display_name = "Dengage"

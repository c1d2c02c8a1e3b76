"""Trio telemetry gateway: device state in (MQTT or simulator), snapshots and deltas out."""

__version__ = "0.1.0"

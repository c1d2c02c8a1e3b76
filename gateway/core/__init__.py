"""The sans-io core: topic state, subscriptions, outboxes and the wire protocol.

Nothing under this package performs I/O, imports trio, sockets, paho or
trio_websocket, or reads a clock: time is always a parameter. A test walks the
imports and fails if that changes.
"""

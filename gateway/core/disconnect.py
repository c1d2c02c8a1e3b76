"""Every way the gateway ends a stream: close code, reason text, metric, client action.

Rules:

* Every close the gateway sends (WebSocket close frame or SSE ``close`` event) is an
  entry of :data:`DISCONNECTS`; no call site invents a code or a metric reason.
* ``reconnect`` is the client's decision: ``False`` means retrying cannot help (the
  client or its token must change first). The Python client (``gateway.client``),
  the JS client (``dashboard/js/client.js``, ``NO_RECONNECT``) and the close-code
  table of ``docs/protocol.md`` are checked against this table by tests.
* A code the table does not know (1006, an application's own 4000...) means
  "reconnect with backoff".
* Streams that end without a close frame (the peer left, stopped answering, or the
  gateway failed) are counted under :data:`ENDED_REASONS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DISCONNECTS",
    "ENDED_REASONS",
    "METRIC_REASONS",
    "NO_RECONNECT",
    "Disconnect",
    "by_code",
    "should_reconnect",
]


@dataclass(frozen=True, slots=True)
class Disconnect:
    code: int
    text: str  # the close frame's reason (a call site may give a more precise one)
    metric: str  # the ``reason`` label of gateway_websocket_disconnects_total
    reconnect: bool  # whether a client should connect again (with backoff)
    meaning: str  # for docs/protocol.md
    action: str  # what the client should do, for docs/protocol.md


NORMAL: Final = Disconnect(
    1000,
    "normal closure",
    "client_close",
    False,
    "normal closure",
    "do not reconnect unless you want to",
)
IDLE: Final = Disconnect(
    1001, "idle", "idle", True,
    "going away: the connection sent nothing for `idle_timeout_s` (off by default)",
    "reconnect with backoff",
)  # fmt: skip
BAD_FRAME: Final = Disconnect(
    1002, "protocol error", "protocol", False,
    "WebSocket protocol error (bad frame: unmasked, reserved bits, bad opcode, bad control frame)",
    "fix the client",
)  # fmt: skip
BINARY: Final = Disconnect(
    1003, "binary messages are not supported; send JSON text", "protocol", False,
    "binary message: this protocol is JSON text", "fix the client",
)  # fmt: skip
BAD_UTF8: Final = Disconnect(
    1007, "invalid UTF-8", "protocol", False, "invalid UTF-8 in a text message", "fix the client"
)
INCOMPLETE: Final = Disconnect(
    1008, "a message must arrive whole within message_timeout_s", "protocol", False,
    "a message did not arrive whole within the message deadline (`server.message_timeout_s`), "
    "or came in more than 128 frames",
    "fix the client or its network",
)  # fmt: skip
TOO_BIG: Final = Disconnect(
    1009, "message too big", "limit", False,
    "message too big (over `max_message_bytes`, also after inflating)", "fix the client",
)  # fmt: skip
SHUTDOWN: Final = Disconnect(
    1012, "service restart: reconnect", "shutdown", True,
    "service restart (graceful shutdown)", "reconnect soon, with resume",
)  # fmt: skip
TRY_LATER: Final = Disconnect(
    1013, "try again later", "limit", True,
    "try again later (reserved: this version refuses overload with HTTP 503 before the upgrade)",
    "reconnect with backoff",
)  # fmt: skip
AUTH_FAILED: Final = Disconnect(
    4001, "authentication failed", "auth", False,
    "authentication failed, or the token expired while connected",
    "get a new token, then reconnect",
)  # fmt: skip
AUTH_TIMEOUT: Final = Disconnect(
    4002, "authentication deadline passed", "auth", True,
    "authentication deadline passed", "reconnect, and send `auth` sooner",
)  # fmt: skip
SLOW: Final = Disconnect(
    4008, "slow subscriber", "slow", True,
    "slow subscriber: data waited longer than `max_lag_s`, or writes stalled longer than "
    "`stall_s`",
    "reconnect with backoff (you will resume)",
)  # fmt: skip
UNREAD: Final = Disconnect(
    4009, "too many bytes pending for a peer that does not read", "limit", True,
    "the connection did not read its answers: more than `server.max_pending_bytes` of "
    "acks, errors and pongs were waiting for it",
    "read what the gateway sends; reconnect with backoff",
)  # fmt: skip
RATE_LIMIT: Final = Disconnect(
    4029, "client message rate limit exceeded", "limit", True,
    "client messages kept coming over `welcome.limits.messages_per_s` after a "
    "`rate_limited` error",
    "slow down, reconnect with backoff",
)  # fmt: skip
TOO_MANY_ERRORS: Final = Disconnect(
    4400,
    "too many protocol errors",
    "protocol",
    False,
    "too many protocol errors",
    "fix the client",
)

#: every close the gateway may send, by code
DISCONNECTS: Final[Mapping[int, Disconnect]] = {
    d.code: d
    for d in (
        NORMAL, IDLE, BAD_FRAME, BINARY, BAD_UTF8, INCOMPLETE, TOO_BIG, SHUTDOWN, TRY_LATER,
        AUTH_FAILED, AUTH_TIMEOUT, SLOW, UNREAD, RATE_LIMIT, TOO_MANY_ERRORS,
    )
}  # fmt: skip

#: reasons of streams that ended without a close from the gateway
ENDED_REASONS: Final = ("client_close", "client_gone", "heartbeat", "error")

#: every value of the disconnect metric's ``reason`` label
METRIC_REASONS: Final[tuple[str, ...]] = tuple(
    dict.fromkeys([*ENDED_REASONS, *(d.metric for d in DISCONNECTS.values())])
)

#: close codes after which a client must not reconnect by itself
NO_RECONNECT: Final = frozenset(code for code, d in DISCONNECTS.items() if not d.reconnect)


def by_code(code: int) -> Disconnect:
    """The entry for a close code chosen by the WebSocket layer (1002, 1007, 1009)."""
    return DISCONNECTS.get(code, BAD_FRAME)


def should_reconnect(code: int | None) -> bool:
    """A client's decision after a close with ``code`` (None: no close frame)."""
    return code not in NO_RECONNECT

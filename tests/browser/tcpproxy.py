"""A TCP proxy on 127.0.0.1 in front of a gateway, for tests that need a network path
which misbehaves in one way (each subclass says how, in ``_handle``)."""

from __future__ import annotations

import trio


class TcpProxy:
    def __init__(self, target: int) -> None:
        self.target = target  # the gateway's port
        self.port = 0  # the proxy's, once serving

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        raise NotImplementedError

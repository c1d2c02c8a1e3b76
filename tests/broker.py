"""A real mosquitto for tests: own config, ephemeral port, persistence in a temp dir.

Only the process this fixture started is ever signalled (by its pid, through the
process object), and it is killed at teardown whatever happened.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import trio

from tests.conftest import require_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    def __init__(
        self,
        workdir: Path,
        *,
        ws_port: int | None = None,
        listener_options: list[str] | None = None,
    ) -> None:
        self.binary = require_binary("mosquitto")
        self.pub = require_binary("mosquitto_pub", "mosquitto-clients")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = self.dir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            *(listener_options or ["allow_anonymous true"]),
            "persistence true",
            f"persistence_location {self.dir}/",
            "max_queued_messages 200000",
            "max_inflight_messages 0",
            "user root",  # do not drop privileges: the temp dir belongs to us
            f"log_dest file {self.dir}/mosquitto.log",
        ]
        if ws_port is not None:
            lines += [f"listener {ws_port} 127.0.0.1", "protocol websockets"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: trio.Process | None = None

    async def start(self) -> None:
        self.proc = await trio.lowlevel.open_process(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with trio.fail_after(10):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(
                            f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()}"
                        ) from None
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                return

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.resume()
            self.proc.terminate()  # SIGTERM: mosquitto saves its retained messages
            with trio.move_on_after(5):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)

    async def publish(
        self, topic: str, payload: bytes | str, *, retain: bool = False, qos: int = 0
    ) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        args = [self.pub, "-h", "127.0.0.1", "-p", str(self.port), "-t", topic, "-q", str(qos)]
        args.append("-s" if data else "-n")  # stdin, or a null (empty) message
        if retain:
            args.append("-r")
        await trio.run_process(args, stdin=data)

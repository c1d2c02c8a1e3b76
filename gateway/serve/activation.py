"""Socket activation: listening sockets passed in by the process that starts us.

The protocol is systemd's (``LISTEN_FDS``, sd_listen_fds(3)). Why: a socket that
outlives the gateway process keeps a restart from refusing connections. While one
gateway stops and the next one starts, the kernel completes the screens' TCP
handshakes and queues them in the socket's backlog; the new process accepts them as
soon as it serves, instead of every screen being refused and retrying on a timer
(docs/deployment.md, "Restarts without refused connections").

Rules:

* The sockets are taken only if ``LISTEN_PID`` is this process's id (the variables
  are meant for this process, not inherited by accident from a parent), from file
  descriptor 3 on, ``LISTEN_FDS`` of them.
* ``LISTEN_FDNAMES`` (colon-separated, systemd's ``FileDescriptorName=``) picks which
  is which: ``public`` and ``admin``. Without names, the first is the public listener
  and the second, if any, the admin one. Any other name is an error.
* Each must be a listening TCP socket (``SO_ACCEPTCONN``); anything else is a clear
  error at start, never a silent fallback to binding a port of our own.
* The variables are removed once read, and the descriptors made non-inheritable, so
  a process the gateway starts cannot take them by mistake.
* The gateway closes only its own descriptor at shutdown: the socket stays open in
  the process that passed it (systemd, or any supervisor), with its backlog.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable, MutableMapping
from typing import Any

__all__ = ["FIRST_FD", "ActivationError", "inherited_listeners", "passing"]

FIRST_FD = 3  # SD_LISTEN_FDS_START
NAMES = ("public", "admin")


class ActivationError(OSError):
    """The sockets passed in do not fit (a configuration error of the supervisor)."""


def inherited_listeners(
    env: MutableMapping[str, str] | None = None, pid: int | None = None
) -> dict[str, socket.socket]:
    """``{"public": sock, "admin": sock}`` (either may be missing) passed in by the
    starting process, or ``{}`` when none were (see the module's rules)."""
    env = os.environ if env is None else env
    if pid is None:
        pid = os.getpid()
    if env.get("LISTEN_PID", "").strip() != str(pid):
        return {}
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        raise ActivationError(f"LISTEN_FDS is not a number: {env['LISTEN_FDS']!r}") from None
    names_text = env.get("LISTEN_FDNAMES", "")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if count <= 0:
        return {}
    given = names_text.split(":") if names_text else []
    if given and all(n in NAMES for n in given) and len(given) == count:
        names = given
    elif not given or all(n not in NAMES for n in given):
        names = list(NAMES[:count])  # systemd's default names are the unit's: by position
    else:
        raise ActivationError(
            f"LISTEN_FDNAMES {names_text!r}: name the {count} sockets 'public' and 'admin'"
        )
    if count > len(NAMES) or len(set(names)) != len(names):
        raise ActivationError(
            f"{count} sockets passed in (LISTEN_FDS): the gateway takes one public "
            "listener and at most one admin listener"
        )
    out: dict[str, socket.socket] = {}
    for i, name in enumerate(names):
        fd = FIRST_FD + i
        try:
            sock = socket.socket(fileno=fd)
        except OSError as err:
            raise ActivationError(f"socket {name} (fd {fd}) passed in: {err}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            sock.detach()
            raise ActivationError(
                f"socket {name} (fd {fd}) passed in is not a listening TCP socket"
            )
        os.set_inheritable(fd, False)
        sock.setblocking(False)
        out[name] = sock
    return out


def passing(listeners: dict[str, socket.socket]) -> tuple[list[str], dict[str, Any]]:
    """For a supervisor written in Python (the benchmarks and tests are one): the argv
    prefix and the ``subprocess.Popen`` keyword arguments (``env`` to merge into the
    child's environment) that hand ``listeners`` (name -> listening socket) to the
    child the way systemd does: at descriptors 3, 4..., with ``LISTEN_FDS``,
    ``LISTEN_FDNAMES`` and ``LISTEN_PID`` set to the child's own pid (a ``sh`` that
    sets it and ``exec``s the command, so the pid is the gateway's)."""
    fds = [s.fileno() for s in listeners.values()]
    targets = [FIRST_FD + i for i in range(len(fds))]

    def child() -> None:  # after fork, before exec: descriptors only
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # none clobbered
        for fd, target in zip(high, targets, strict=True):
            os.dup2(fd, target)  # inheritable
            os.close(fd)

    setup: Callable[[], None] = child
    env = {"LISTEN_FDS": str(len(fds)), "LISTEN_FDNAMES": ":".join(listeners)}
    prefix = ["/bin/sh", "-c", 'export LISTEN_PID=$$; exec "$0" "$@"']
    return prefix, {"preexec_fn": setup, "pass_fds": tuple(targets), "env": env}

"""Downloading an answer's body with a deadline for the whole of it.

The per-read timeout of an HTTP client bounds each wait for bytes, not the download: a
server that sends its headers and then trickles the body would hold a worker and its claim
for hours. A timer shuts the socket down at the deadline (closing it would not wake a read
blocked in another thread).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import requests
import urllib3

from emif_daemon.errors import TransientError


def read_whole(response: requests.Response, deadline: float, budget_s: float) -> bytes:
    """The body of a streamed `response`, whole by `deadline` (monotonic time), or a
    TransientError saying what happened; `budget_s` is the limit as the user set it."""
    cutoff = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, (response,))
    cutoff.daemon = True
    cutoff.start()
    failed: Exception | None = None
    try:
        content: bytes = response.raw.read(decode_content=True)
    except (
        requests.RequestException,
        urllib3.exceptions.HTTPError,
        OSError,
        ValueError,
        AttributeError,
    ) as exc:
        content, failed = b"", exc  # AttributeError/ValueError: closed under the read
    finally:
        cutoff.cancel()
        cutoff.join()
    if time.monotonic() >= deadline:
        raise TransientError(
            f"the answer did not arrive whole within {budget_s:g} s of sending "
            "(server.read_timeout_s); it came too slowly"
        ) from failed
    if failed is not None:
        raise TransientError(f"connection dropped while answering: {failed}") from failed
    return content


def _cut(response: requests.Response) -> None:
    """End a download from another thread: a blocked read wakes only when its socket is
    shut down (closing it does not wake it)."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    response.close()

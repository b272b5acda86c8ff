"""Request body limits, in bytes (413) and in time (408), answered with the API's JSON error body.

FastAPI's own ``max_body_size`` counts bytes too, but answers a declared too-large Content-Length
with plain text. Two things here are for clients rather than for the server:

- Lingering close, as nginx does: a server that answers 413 and closes while the client is still
  sending makes the kernel reset the connection, and clients that send the whole body before
  reading (Python's urllib, requests) then see "connection reset" instead of the 413. So the
  answer is sent first, then the rest of the body is read and discarded, for at most
  ``LINGER_BYTES`` bytes and ``LINGER_SECONDS`` seconds, and only then is the response completed
  and the connection closed.
- A slow client (one trickling its body) gets 408 once ``read_timeout`` seconds have passed since
  its request began; it holds one connection and no inference slot meanwhile.
"""

import asyncio
import contextlib
import json

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LINGER_BYTES = 64 * 1024 * 1024
LINGER_SECONDS = 10.0


class _BodyRefused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_size: int, read_timeout: float):
        self.app = app
        self.max_body_size = max_body_size
        self.read_timeout = read_timeout

    def too_large(self, size: str) -> _BodyRefused:
        detail = f"request body too large: {size}, the limit is {self.max_body_size} bytes (SSDLITE_MAX_BODY_SIZE)"
        return _BodyRefused(413, detail)

    async def __call__(self, scope: Scope, receive: Receive, send: Send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        # A client waiting for "100 Continue" has not sent the body: there is nothing to drain.
        linger = "100-continue" not in headers.get("expect", "").lower()
        if declared.isdigit() and int(declared) > self.max_body_size:
            await self.refuse(self.too_large(f"{declared} bytes"), receive, send, linger)
            return
        deadline = asyncio.get_running_loop().time() + self.read_timeout
        received = 0
        body_complete = False
        response_started = False

        async def receive_within_limits() -> Message:
            nonlocal received, body_complete
            if body_complete:  # later reads only wait for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):  # no task per read, unlike wait_for
                    message = await receive()
            except TimeoutError:
                raise _BodyRefused(
                    408, f"request body not received within {self.read_timeout:g} s (SSDLITE_READ_TIMEOUT)"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = not message.get("more_body", False)
                if received > self.max_body_size:
                    raise self.too_large(f"over {self.max_body_size} bytes received")
            return message

        async def send_tracking(message: Message):
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_within_limits, send_tracking)
        except _BodyRefused as refusal:
            if response_started:
                raise
            await self.refuse(refusal, receive, send, linger=linger and refusal.status == 413)

    async def refuse(self, refusal: _BodyRefused, receive: Receive, send: Send, linger: bool):
        body = json.dumps({"detail": refusal.detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": linger})
        if not linger:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_SECONDS):
                await self._discard_body(receive)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _discard_body(receive: Receive):
        discarded = 0
        while discarded <= LINGER_BYTES:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            discarded += len(message.get("body", b""))

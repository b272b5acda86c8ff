"""Request body limit that answers 413 with a JSON body and never buffers an oversized body.

FastAPI's own ``max_body_size`` does the same counting, but when the client declares a
too-large Content-Length it replaces the response with a plain-text 413; this one keeps the
API's ``{"detail": ...}`` shape in every case.
"""

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_size: int):
        self.app = app
        self.max_body_size = max_body_size

    def detail(self, size: str) -> str:
        return f"request body too large: {size}, the limit is {self.max_body_size} bytes (SSDLITE_MAX_BODY_SIZE)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_size:
            # Answered before reading a byte of the body; the server then closes the connection.
            response = JSONResponse({"detail": self.detail(f"{declared} bytes")}, 413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_size:
                    raise HTTPException(413, self.detail(f"over {self.max_body_size} bytes received"))
            return message

        await self.app(scope, receive_within_limit, send)

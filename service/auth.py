"""API keys (off unless configured) for the detection, stream and model endpoints, and keeping keys out of logs.

HTTP clients send ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. Browsers cannot set headers
on a WebSocket, so ``/ws`` also takes ``?api_key=KEY``, or the key as a subprotocol: offer
``["ssdlite", "ssdlite.key.KEY"]`` and the server selects ``ssdlite`` (it never echoes the key).
A presented key is hashed and compared with every configured key's hash by ``hmac.compare_digest``,
so the time an answer takes says nothing about how much of a key was right.
"""

import hashlib
import hmac
import logging
import re

from fastapi import HTTPException
from starlette.requests import HTTPConnection

from .settings import Settings

SUBPROTOCOL = "ssdlite"
KEY_SUBPROTOCOL_PREFIX = "ssdlite.key."
# RFC 7230 token characters: a key made of them fits a header and a WebSocket subprotocol.
_KEY_PATTERN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")
# Where a key can show up in a log line: a query string, a subprotocol, a header (debug logs print them).
_LOGGED_KEY = re.compile(
    r"(api_key=|ssdlite\.key\.|authorization:\s*(?:bearer\s+)?|x-api-key:\s*)[^&\s\"',]+", re.IGNORECASE
)


class ApiKeyConfigError(ValueError):
    """The configured keys cannot be used; the message says which setting and why (never the key)."""


def load_api_keys(settings: Settings) -> tuple[str, ...]:
    """The keys of ``SSDLITE_API_KEYS`` plus those in ``SSDLITE_API_KEYS_FILE`` (one per line, ``#`` comments).

    Raises:
        ApiKeyConfigError: the file cannot be read or holds no key, or a key has characters outside
            RFC 7230's token set.
    """
    keys = list(settings.api_keys)
    if settings.api_keys_file is not None:
        path = settings.api_keys_file
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise ApiKeyConfigError(f"cannot read SSDLITE_API_KEYS_FILE {path}: {reason}") from None
        from_file = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not from_file:
            raise ApiKeyConfigError(f"SSDLITE_API_KEYS_FILE {path} holds no key (one per line, # starts a comment)")
        keys += from_file
    for number, key in enumerate(keys, 1):
        if not _KEY_PATTERN.fullmatch(key):
            raise ApiKeyConfigError(
                f"API key #{number} has characters other than letters, digits and !#$%&'*+-.^_`|~ "
                "(it must fit an HTTP header and a WebSocket subprotocol)"
            )
    return tuple(dict.fromkeys(keys))


def presented_key(connection: HTTPConnection) -> str | None:
    """The key a request or WebSocket handshake carries, if any."""
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if key := connection.headers.get("x-api-key", "").strip():
        return key
    if connection.scope["type"] == "websocket":
        if key := connection.query_params.get("api_key"):
            return key
        for protocol in connection.scope.get("subprotocols", []):
            if protocol.startswith(KEY_SUBPROTOCOL_PREFIX):
                return protocol[len(KEY_SUBPROTOCOL_PREFIX) :]
    return None


class ApiKeyGuard:
    """A FastAPI dependency: 401 unless the request carries one of ``keys``."""

    def __init__(self, keys: tuple[str, ...]):
        if not keys:
            raise ValueError("ApiKeyGuard needs at least one key")
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    def accepts(self, key: str) -> bool:
        digest = hashlib.sha256(key.encode()).digest()
        matched = False
        for known in self._digests:  # every key is compared: no early exit
            matched |= hmac.compare_digest(digest, known)
        return matched

    async def __call__(self, connection: HTTPConnection):
        key = presented_key(connection)
        if key is None:
            how = "'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            if connection.scope["type"] == "websocket":
                how += f", '?api_key=KEY' or the subprotocols ['{SUBPROTOCOL}', '{KEY_SUBPROTOCOL_PREFIX}KEY']"
            raise HTTPException(401, f"missing API key: send {how}", headers={"WWW-Authenticate": "Bearer"})
        if not self.accepts(key):
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class RedactApiKeys(logging.Filter):
    """Replaces keys in log records: uvicorn logs paths with their query strings, and at debug level
    the WebSocket handshake's headers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):  # uvicorn's access formatter unpacks the args: keep their shape
            record.args = tuple(_redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        if isinstance(record.msg, str):
            record.msg = _redact(record.msg)
        message = record.getMessage()
        if _LOGGED_KEY.search(message.replace("[redacted]", "")):  # a header name and value in separate args
            record.msg, record.args = _redact(message), None
        return True


def _redact(text: str) -> str:
    return _LOGGED_KEY.sub(r"\1[redacted]", text)


def redact_api_keys_in_logs(loggers=("uvicorn.access", "uvicorn.error", "websockets.server", "service")):
    """Adds :class:`RedactApiKeys` to the loggers that write request paths (once per logger)."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactApiKeys) for f in logger.filters):
            logger.addFilter(RedactApiKeys())

"""The proxy's exception tree, each rendered as OpenAI's error JSON.

    ProxyError                      any error the proxy itself answers with
      +-- InvalidRequest    400     malformed body, wrong types, unknown stage rule
      +-- AuthenticationError 401   missing or unknown proxy key
      +-- NotFound          404     unknown route or object (also other tenants' objects)
      +-- RequestTimeout    408     body not received within server.body_timeout_seconds
      +-- PayloadTooLarge   413     body above server.max_body_bytes
      +-- UnsupportedEncoding 415   a Content-Encoding the proxy does not decode
      +-- RateLimited       429     rpm / tpm / concurrency / budget exhausted
      +-- UpstreamError     502/504 upstream unreachable or timed out after retries
      +-- Unavailable       503     a required backend (e.g. Redis, fail-closed) is down

Errors returned *by* upstream are not exceptions: their status and body are
passed to the client untouched.
"""

from __future__ import annotations

from typing import Any

import orjson


class ProxyError(Exception):
    """An error answered by the proxy in OpenAI's `{"error": {...}}` shape."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        """The OpenAI error object, serialized."""
        return orjson.dumps(self.to_dict())


class InvalidRequest(ProxyError):
    """The request body or parameters are wrong (400)."""

    status = 400
    type = "invalid_request_error"


class AuthenticationError(ProxyError):
    """Missing or unknown API key (401)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    """The key is valid but not allowed to do this (403), e.g. admin paths, models."""

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(ProxyError):
    """Unknown route or object; other tenants' objects are reported the same way (404)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class RequestTimeout(ProxyError):
    """The request body did not arrive in time (408)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(ProxyError):
    """Request body larger than the configured limit (413)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedEncoding(ProxyError):
    """The body's Content-Encoding is not one the proxy decodes (415)."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_content_encoding"


class RateLimited(ProxyError):
    """Rate limit or budget exhausted (429); `code` says which."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class QuotaExceeded(RateLimited):
    """Spend budget exhausted (429 `insufficient_quota`, as OpenAI sends it)."""

    type = "insufficient_quota"
    code = "insufficient_quota"


class UpstreamError(ProxyError):
    """Upstream could not be reached or timed out after retries (502 / 504)."""

    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"

    def __init__(self, message: str, *, status: int = 502, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status


class Unavailable(ProxyError):
    """A backend the proxy needs is down and the policy is to refuse (503)."""

    status = 503
    type = "server_error"
    code = "service_unavailable"

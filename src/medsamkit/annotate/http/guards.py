"""What every request passes before a router sees it, and how every error leaves: a Host allow-list (loopback
names and the address the server was started on, so a DNS-rebinding page gets nothing even with --no-token),
the session token on /api (as a header or query) and on the MONAI Label API (as the path segment after
/monailabel: its clients keep a URL's path but send no header), a body size limit (413; larger for the MONAI
Label API, whose clients upload whole volumes), security headers on every response (no framing, a
Content-Security-Policy that allows only the page's own files, no referrer: the token travels in the URL),
and every error as one line of JSON (never a traceback)."""

from __future__ import annotations

import logging
import secrets
import socket
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from medsamkit.core.errors import InputError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 64 * 1024  # bytes of a request body: the largest real one (200 clicks) is a few kB
MONAILABEL = "/monailabel"  # the MONAI Label-compatible API's path: /monailabel/TOKEN/... (annotate.http.monailabel)
MAX_UPLOAD = 1 << 30  # bytes of a MONAI Label request body: an uploaded volume or label map
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-frame-options", b"DENY"), (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
log = logging.getLogger("medsamkit.annotate")


def allowed_hosts(bind: str) -> set[str]:
    """Host names a request may name: loopback, the bound address, and for a wildcard bind (0.0.0.0, ::) the
    names and addresses this machine answers to."""
    names = {*LOOPBACK, bind.lower()}
    if bind in ("0.0.0.0", "::", ""):
        hostname = socket.gethostname()
        names |= {hostname.lower(), socket.getfqdn().lower()}
        try:
            names |= {str(info[4][0]).lower() for info in socket.getaddrinfo(hostname, None)}
        except OSError:
            pass
    return names


def host_name(header: str) -> str:
    """The host of a Host header, without port or IPv6 brackets, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def one_line(message: object) -> str:
    """A message as one printable line of at most 300 characters (also for text a client sent)."""
    text = " ".join(str(message).split())[:300]
    return "".join(c if c.isprintable() else "?" for c in text.encode("utf-8", "replace").decode("utf-8"))


def error(status: int, message: object) -> JSONResponse:
    """The one error shape: ``{"error": "one line"}``."""
    return JSONResponse({"error": one_line(message)}, status_code=status)


class Guard:
    """ASGI middleware: Host allow-list, token, body limit and security headers (see the module docstring)."""

    def __init__(self, app, token: str | None, hosts: set[str], max_body: int = MAX_BODY) -> None:
        self.app, self.token, self.hosts, self.max_body = app, token, hosts, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        compat = path == MONAILABEL or path.startswith(MONAILABEL + "/")
        limit = MAX_UPLOAD if compat else self.max_body
        refusal = self._refusal(scope, headers, compat, limit)
        if refusal is not None:
            return await refusal(scope, receive, self._with_headers(send))
        await self.app(scope, self._limited(receive, limit), self._with_headers(send))

    def _refusal(self, scope, headers: dict[str, str], compat: bool, limit: int) -> JSONResponse | None:
        host = host_name(headers.get("host", ""))
        if host not in self.hosts:
            return error(400, f"Host {host!r} is not this server's address (open the URL the server printed)")
        if self.token is not None and scope["path"].startswith("/api"):
            auth = headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else \
                (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [""])[0]
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return error(401, "missing or wrong token: open the URL the server printed")
        if self.token is not None and compat:
            given = scope["path"][len(MONAILABEL) + 1:].split("/", 1)[0]
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return error(401, "missing or wrong token in the path: use the MONAI Label URL the server printed")
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > limit:
            return error(413, f"request body over {limit} bytes")
        return None

    def _limited(self, receive, limit: int):
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # a body sent without its length
                raise HTTPException(413, f"request body over {limit} bytes")
            return message

        return limited

    @staticmethod
    def _with_headers(send):
        async def sending(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        return sending


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return "malformed JSON body"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{where or 'request'}: {first.get('msg', 'invalid')}"


def install_guards(app: FastAPI, token: str | None, hosts: set[str]) -> None:
    """The guard middleware and the one-line error answers of an app."""
    app.add_middleware(Guard, token=token, hosts=hosts)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return error(400, _validation_message(exc))

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError):
        return error(400, exc)

    @app.exception_handler(KeyError)
    async def not_found(request: Request, exc: KeyError):
        return error(404, f"not found: {exc.args[0] if exc.args else ''}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, exc.detail)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, f"internal error ({type(exc).__name__}); see the server's log")

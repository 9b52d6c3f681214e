"""Starting the annotation server: a fresh token per launch, loopback unless told otherwise, the one line
with the URL to open; ``BackgroundServer`` runs a real uvicorn in a thread (tests, benchmarks)."""

from __future__ import annotations

import logging
import secrets
import socket
import sys
import threading
import time

from medsamkit.annotate.http.app import create_app, monailabel_path
from medsamkit.annotate.http.guards import LOOPBACK
from medsamkit.annotate.session.config import AnnotateConfig
from medsamkit.annotate.session.workspace import Workspace
from medsamkit.core.errors import InputError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def session_url(host: str, port: int, token: str | None) -> str:
    """The URL the person opens (the token travels in it; the page then sends it as a header)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def monailabel_url(host: str, port: int, token: str | None) -> str:
    """The server address to paste into a MONAI Label client (the token travels in its path)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}{monailabel_path(token)}/"


def _warn_exposure(cfg: AnnotateConfig) -> None:
    if cfg.host not in LOOPBACK:
        what = "the token is the only protection" if cfg.token else "and --no-token: ANYONE who can reach it"
        print(f"medsamkit annotate: warning: listening on {cfg.host}, reachable from other machines; {what} "
              "(plain HTTP: use it on a trusted network only)", file=sys.stderr)
    elif not cfg.token:
        print("medsamkit annotate: warning: --no-token: any local program or web page can use the API",
              file=sys.stderr)


def serve(cfg: AnnotateConfig) -> None:
    """Load everything, print ``medsamkit annotate: URL`` and serve until Ctrl-C."""
    import uvicorn

    if not 0 < cfg.port < 65536:
        raise InputError(f"--port must be 1..65535, got {cfg.port}")
    workspace = Workspace(cfg)
    token = secrets.token_urlsafe(24) if cfg.token else None
    app = create_app(workspace, token)
    _warn_exposure(cfg)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    try:
        sock = config.bind_socket()
        sock.listen(128)  # connections made right after the URL is printed wait instead of being refused
    except OSError as exc:
        raise InputError(f"cannot listen on {cfg.host}:{cfg.port} ({exc.strerror}); try --port") from None
    print(f"medsamkit annotate: {session_url(cfg.host, cfg.port, token)}", flush=True)
    if cfg.monailabel:
        print(f"medsamkit annotate: MONAI Label server (3D Slicer / OHIF / QuPath): "
              f"{monailabel_url(cfg.host, cfg.port, token)}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        workspace.close()


class BackgroundServer:
    """A real uvicorn serving ``workspace`` on a free loopback port in a daemon thread (``with`` block)."""

    def __init__(self, workspace: Workspace, token: str | None = "test-token") -> None:
        import uvicorn

        self.token = token
        self.port = free_port()
        self.app = create_app(workspace, token)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        """The page URL with the token."""
        return session_url("127.0.0.1", self.port, self.token)

    @property
    def monailabel(self) -> str:
        """The MONAI Label server address (with --monailabel)."""
        return monailabel_url("127.0.0.1", self.port, self.token)

    @property
    def base(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BackgroundServer:
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True  # the app's lifespan stops its learn rounds
        self.thread.join(timeout=10)

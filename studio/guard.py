"""What the web server itself enforces before Gradio sees a request: sign-in throttling per client and
per-person access to the files the app writes (exports, overlays, masks).

`OwnedFiles` writes each output under an unguessable folder of the private temporary folder and remembers
who may fetch it (the person it was made for; admins too). `Guard` is an ASGI middleware (passed to
`demo.launch(app_kwargs={"middleware": …})`): a file that belongs to someone else answers 404, as if it did
not exist; a client with too many failed sign-ins gets 429 until its window has passed.
"""
from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from urllib.parse import unquote

import numpy as np
from PIL import Image

from studio.users import SignInThrottle

FILE_TTL_S = 3600.0
MAX_FILES = 20_000
CLIENT_FAILURES = 20            # failed sign-ins per client address in the throttle's window


class OwnedFiles:
    """Output files by owner (thread-safe, bounded; files older than FILE_TTL_S are deleted)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._owners: OrderedDict[str, tuple[float, frozenset[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def new_folder(self, prefix: str) -> Path:
        folder = self.folder / f"{prefix}-{secrets.token_hex(16)}"
        folder.mkdir(mode=0o700)
        return folder

    def add(self, path: Path, *owners: str) -> str:
        key = str(Path(path).resolve())
        now = time.monotonic()
        with self._lock:
            self._owners[key] = (now, frozenset(owners))
            self._owners.move_to_end(key)
            self._prune(now)
        return key

    def png(self, image: np.ndarray, owner: str, name: str = "image") -> str:
        """Write an image (uint8 RGB or L) as a PNG only `owner` (and admins) may fetch; returns its path."""
        path = self.new_folder("out") / f"{name}.png"
        Image.fromarray(np.asarray(image)).save(path, "PNG")
        return self.add(path, owner)

    def _prune(self, now: float) -> None:
        while self._owners:
            key, (at, _) = next(iter(self._owners.items()))
            if now - at <= FILE_TTL_S and len(self._owners) <= MAX_FILES:
                break
            del self._owners[key]
            folder = Path(key).parent
            if folder.parent == self.folder:
                shutil.rmtree(folder, ignore_errors=True)

    def owners(self, path: str) -> frozenset[str] | None:
        """Who may fetch `path` (None: not a file this registry made)."""
        try:
            key = str(Path(path).resolve())
        except (OSError, RuntimeError, ValueError):
            return None
        with self._lock:
            entry = self._owners.get(key)
        return None if entry is None else entry[1]


class Guard:
    """ASGI middleware: per-person file access and per-client sign-in throttling (see the module docstring)."""

    def __init__(self, app, studio=None):
        self.app, self.studio = app, studio
        self.clients = SignInThrottle(max_failures=getattr(studio, "client_failures", CLIENT_FAILURES))

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or self.studio is None:
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path.rstrip("/").endswith("/login") and scope.get("method") == "POST":
            return await self._login(scope, receive, send)
        if "/file=" in path:
            target = unquote(path.split("/file=", 1)[1])
            owners = self.studio.files.owners(target)
            if owners is not None and not self._may_fetch(scope, owners):
                return await _respond(send, 404, b'{"detail":"Not Found"}')
        return await self.app(scope, receive, send)

    def _may_fetch(self, scope, owners: frozenset[str]) -> bool:
        user = self._user(scope)
        if user is None:
            return self.studio.single_user
        return user in owners or self.studio.role_of(user) == "admin"

    @staticmethod
    def _user(scope) -> str | None:
        app = scope.get("app")
        tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
        if not tokens or cookie_id is None:
            return None
        cookies = {}
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    if "=" in part:
                        k, v = part.strip().split("=", 1)
                        cookies[k] = v
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
        return tokens.get(token) if token else None

    async def _login(self, scope, receive, send):
        client = (scope.get("client") or ("?", 0))[0]
        key = "client:" + str(client)
        if self.clients.blocked(key):
            return await _respond(send, 429, b'{"detail":"Too many failed sign-ins from here; try again later."}')
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status.get("code", 500) >= 400:
            self.clients.fail(key)
        else:
            self.clients.succeed(key)


async def _respond(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

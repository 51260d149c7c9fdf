"""Who may sign in, with which role, and who is asking.

The users file (named by `CORESEG_USERS`) is JSON:

    {"users": [
        {"name": "alice", "role": "annotator", "password_hash": "pbkdf2_sha256$200000$<salt>$<hex>"},
        {"name": "bob",   "role": "reviewer",  "password_hash": "..."},
        {"name": "hf-username", "role": "admin"}
    ]}

Passwords are stored only as salted PBKDF2 hashes; make an entry with

    python -m studio.users add USERS_FILE NAME ROLE      # asks for the password

An entry without `password_hash` cannot sign in with a password; on a Hugging Face Space it gives that
Hugging Face user their role (everyone else who signs in with Hugging Face is an annotator).
Without a users file (and not on a Space) the app is a single-user laptop tool: one local user with
every role, no sign-in.
"""
from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

ROLES = ("annotator", "reviewer", "admin")
LOCAL_USER = "local"
DEFAULT_ITERATIONS = 200_000
MAX_FAILURES = 5                 # wrong passwords per name (or per client) within the window …
FAILURE_WINDOW_S = 300.0         # … after which sign-in is refused until the window has passed
MAX_PASSWORD_CHARS = 1024

# What each role may do; an admin has every role.
PERMISSIONS = {
    "annotate": {"annotator", "reviewer", "admin"},
    "review": {"reviewer", "admin"},
    "dashboard": {"reviewer", "admin"},
    "admin": {"admin"},
}


class AccessDenied(PermissionError):
    """The person is not signed in, or their role does not allow this (str(e) is shown)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def can(self, action: str) -> bool:
        return self.role in PERMISSIONS[action]

    def require(self, action: str) -> "User":
        if not self.can(action):
            need = {"review": "a reviewer", "dashboard": "a reviewer", "admin": "an admin"}.get(action, "an annotator")
            raise AccessDenied(f"{self.name} is signed in as {self.role}; this needs {need}.")
        return self


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS, salt: str | None = None) -> str:
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, expected = encoded.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), expected)


class SignInThrottle:
    """Failed sign-ins per key (a user name, a client address) in a sliding window; bounded and thread-safe.
    Once a key has MAX_FAILURES failures in the window, sign-in is refused for it, right password or not."""

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S, max_keys: int = 10_000):
        self.max_failures, self.window_s, self.max_keys = max_failures, window_s, max_keys
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def blocked(self, key: str) -> bool:
        with self._lock:
            return len(self._recent(key, time.monotonic())) >= self.max_failures

    def fail(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            times = self._recent(key, now)
            self._failures[key] = times + [now]
            self._failures.move_to_end(key)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def succeed(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class UserDirectory:
    """The users file, read once at start-up. The entries never change afterwards; the sign-in throttle
    (failed attempts per name) is the one thing that does, behind its own lock."""

    def __init__(self, entries: list[dict]):
        users: dict[str, dict] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(f"users file entry {i} is not an object")
            name, role = str(entry.get("name", "")).strip(), entry.get("role", "annotator")
            if not name:
                raise ValueError(f"users file entry {i} has no name")
            if role not in ROLES:
                raise ValueError(f"user {name!r} has unknown role {role!r}; use one of {', '.join(ROLES)}")
            if name in users:
                raise ValueError(f"user {name!r} appears twice in the users file")
            users[name] = {"name": name, "role": role, "password_hash": entry.get("password_hash")}
        self._users = users
        self.throttle = SignInThrottle()
        # unknown names are checked against a hash of the same cost as the real ones: no timing tells them apart
        costs = [int(e["password_hash"].split("$")[1]) for e in users.values()
                 if e["password_hash"] and e["password_hash"].count("$") == 3
                 and e["password_hash"].split("$")[1].isdigit()]
        self._dummy_hash = hash_password(secrets.token_hex(8), max(costs) if costs else DEFAULT_ITERATIONS)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "UserDirectory":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"the users file {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"the users file {path} is not valid JSON: {exc}") from None
        entries = data.get("users") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ValueError('the users file must hold {"users": [...]}')
        return cls(entries)

    def authenticate(self, name: str, password: str) -> bool:
        """Gradio's `auth` callable: the same work for known and unknown names; refused while throttled."""
        name, password = str(name or "").strip()[:200], str(password or "")[:MAX_PASSWORD_CHARS]
        entry = self._users.get(name)
        encoded = entry["password_hash"] if entry is not None and entry["password_hash"] else self._dummy_hash
        ok = verify_password(password, encoded) and entry is not None and bool(entry["password_hash"])
        key = "name:" + name
        if self.throttle.blocked(key):
            return False
        if ok:
            self.throttle.succeed(key)
        else:
            self.throttle.fail(key)
        return ok

    def role(self, name: str) -> str | None:
        entry = self._users.get(name)
        return entry["role"] if entry else None

    @property
    def has_passwords(self) -> bool:
        return any(e["password_hash"] for e in self._users.values())

    def names(self) -> list[str]:
        return sorted(self._users)


def resolve_user(directory: UserDirectory | None, on_spaces: bool, auth_name: str | None,
                 oauth_name: str | None) -> User:
    """Who is asking: the Gradio sign-in (users file), the Hugging Face login (Spaces), or the local user."""
    if directory is not None and directory.has_passwords:
        if not auth_name:
            raise AccessDenied("Sign in first.")
        role = directory.role(auth_name)
        if role is None:
            raise AccessDenied("This account is not in the users file.")
        return User(auth_name, role)
    if on_spaces:
        if not oauth_name:
            raise AccessDenied("Sign in with Hugging Face (the button at the top) to work on cases.")
        role = directory.role(oauth_name) if directory is not None else None
        return User(oauth_name, role or "annotator")
    return User(LOCAL_USER, "admin")


def _add(path: Path, name: str, role: str, password: str | None) -> None:
    data = json.loads(path.read_text()) if path.exists() else {"users": []}
    entries = [e for e in data["users"] if e.get("name") != name]
    entry = {"name": name, "role": role}
    if password:
        entry["password_hash"] = hash_password(password)
    entries.append(entry)
    UserDirectory(entries)  # validate
    path.write_text(json.dumps({"users": entries}, indent=2) + "\n")
    os.chmod(path, 0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.users", description="Manage the app's users file.")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="add or replace a user (asks for the password)")
    add.add_argument("file")
    add.add_argument("name")
    add.add_argument("role", choices=ROLES)
    add.add_argument("--no-password", action="store_true", help="a Hugging Face user on a Space (no password)")
    args = parser.parse_args(argv)
    password = None if args.no_password else getpass.getpass(f"password for {args.name}: ")
    try:
        _add(Path(args.file), args.name, args.role, password)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name} ({args.role}) written to {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

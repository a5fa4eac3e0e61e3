"""Tenants and tokens.

A token belongs to one tenant.  Only its SHA-256 digest is stored (``tokens.json`` in the data
directory, mode 0600); a presented token is hashed and compared with every stored digest in
constant time.  With no tokens the collector runs open and single-tenant (tenant ``default``),
which the server allows only on a loopback address.

The token file is re-read when it changes, so ``testengine-collector tokens create`` takes
effect on a running collector without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from collector_server.errors import RequestError, TokenError

DEFAULT_TENANT: Final = "default"
TOKENS_FILE: Final = "tokens.json"
TOKEN_PREFIX: Final = "te_"
TENANT_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class TokenEntry:
    tenant: str
    digest: str  # sha256 hex of the token
    hint: str  # first characters of the token, to tell tokens apart in listings
    created: float


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_tenant(name: str) -> str:
    if not TENANT_PATTERN.fullmatch(name):
        raise TokenError(
            f"[testengine] invalid tenant name {name!r}: expected 1 to 64 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return name


class TokenStore:
    """The token file of a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / TOKENS_FILE

    def load(self) -> list[TokenEntry]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TokenError(f"[testengine] cannot read token file {self.path}: {exc}") from exc
        try:
            data = orjson.loads(raw)
            return [
                TokenEntry(
                    tenant=str(item["tenant"]),
                    digest=str(item["sha256"]),
                    hint=str(item.get("hint", "")),
                    created=float(item.get("created", 0.0)),
                )
                for item in data["tokens"]
            ]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise TokenError(
                f"[testengine] token file {self.path} is not valid: {exc}; expected "
                '{"tokens": [{"tenant": ..., "sha256": ...}]}; fix or delete it and create '
                "tokens again with `testengine-collector tokens create`"
            ) from exc

    def create(self, tenant: str, *, clock: Callable[[], float] = time.time) -> str:
        """Create a token for ``tenant``, store its digest, and return the token (shown once)."""
        check_tenant(tenant)
        token = new_token()
        entry = TokenEntry(tenant, hash_token(token), token[: len(TOKEN_PREFIX) + 4], clock())
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            entries = [*self.load(), entry]
            self._write(entries)
        return token

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.data_dir / (TOKENS_FILE + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, entries: list[TokenEntry]) -> None:
        body = orjson.dumps(
            {
                "tokens": [
                    {"tenant": e.tenant, "sha256": e.digest, "hint": e.hint, "created": e.created}
                    for e in entries
                ]
            },
            option=orjson.OPT_INDENT_2,
        )
        tmp = self.path.with_name(TOKENS_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)


class Authenticator:
    """Maps an ``Authorization`` header to a tenant, or raises a 401 RequestError."""

    def __init__(self, tokens: TokenStore, *, allow_open: bool) -> None:
        self.tokens = tokens
        self.allow_open = allow_open
        self._stamp: tuple[int, int, int] | None = None
        self._entries: list[tuple[bytes, str]] = []

    def _refresh(self) -> None:
        try:
            st = os.stat(self.tokens.path)
        except FileNotFoundError:
            self._stamp, self._entries = None, []
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self._entries = [(bytes.fromhex(e.digest), e.tenant) for e in self.tokens.load()]
            self._stamp = stamp

    @property
    def has_tokens(self) -> bool:
        self._refresh()
        return bool(self._entries)

    def authenticate(self, authorization: str | None) -> str:
        """The tenant of the request."""
        self._refresh()
        if not self._entries:
            if self.allow_open:
                return DEFAULT_TENANT
            raise RequestError(
                401,
                "no_tokens",
                "[testengine] this collector listens on a non-loopback address and has no "
                "tokens: create one with `testengine-collector tokens create --tenant NAME "
                f"--data-dir {self.tokens.data_dir}`",
                "Authorization",
            )
        if not authorization:
            raise RequestError(
                401,
                "missing_token",
                "[testengine] missing Authorization header: expected 'Bearer <token>' "
                "(set TESTENGINE_TOKEN on the client)",
                "Authorization",
            )
        scheme, _, token = authorization.partition(" ")
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).digest()
        tenant: str | None = None
        for stored, owner in self._entries:  # no early exit: time does not depend on a match
            if hmac.compare_digest(stored, digest):
                tenant = owner
        if scheme.lower() != "bearer" or tenant is None:
            raise RequestError(
                401,
                "invalid_token",
                "[testengine] invalid token in Authorization header: expected 'Bearer <token>' "
                "with a token from `testengine-collector tokens create`",
                "Authorization",
            )
        return tenant

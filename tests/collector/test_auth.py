"""Tokens and tenants."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector_server.auth import DEFAULT_TENANT, Authenticator, TokenStore
from collector_server.errors import RequestError


def code_of(auth: Authenticator, header: str | None) -> str:
    with pytest.raises(RequestError) as info:
        auth.authenticate(header)
    assert info.value.status == 401
    return info.value.code


def test_open_on_loopback_until_a_token_exists(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path)
    auth = Authenticator(tokens, allow_open=True)
    assert auth.authenticate(None) == DEFAULT_TENANT
    assert auth.authenticate("Bearer anything") == DEFAULT_TENANT
    token = tokens.create("acme")  # picked up without a restart
    assert auth.authenticate(f"Bearer {token}") == "acme"
    assert code_of(auth, None) == "missing_token"
    assert code_of(auth, "Bearer nope") == "invalid_token"
    assert code_of(auth, f"Token {token}") == "invalid_token"
    assert auth.authenticate(f"bearer   {token}  ") == "acme"


def test_each_token_maps_to_its_tenant(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path)
    a1, b, a2 = tokens.create("a"), tokens.create("b"), tokens.create("a")
    auth = Authenticator(tokens, allow_open=False)
    assert [auth.authenticate(f"Bearer {t}") for t in (a1, b, a2)] == ["a", "b", "a"]
    assert len({a1, b, a2}) == 3


def test_closed_without_tokens_off_loopback(tmp_path: Path) -> None:
    auth = Authenticator(TokenStore(tmp_path), allow_open=False)
    assert code_of(auth, None) == "no_tokens"
    assert not auth.has_tokens

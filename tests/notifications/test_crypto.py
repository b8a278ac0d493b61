"""Secrets at rest: sealing, key rotation, the generated key file, and the config convention."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from lily.config import Settings
from lily.crypto import (
    Keyring,
    SecretKeyError,
    generate_key,
    key_id,
    merge_secrets,
    redacted,
    secret_fields,
    split_secrets,
)


def test_seal_and_open_a_string_and_a_mapping() -> None:
    ring = Keyring.from_keys(generate_key())
    for value in ("xoxb-secret", {"token": "t", "nested": {"n": 1}}):
        sealed = ring.seal(value)
        assert "xoxb" not in sealed and '"t"' not in sealed
        assert sealed.startswith(ring.primary_id + ":")
        assert ring.open(sealed) == value


def test_rotation_old_keys_open_first_key_seals_and_reseal_moves_to_it() -> None:
    old, new = generate_key(), generate_key()
    before = Keyring.from_keys(old)
    sealed = before.seal({"password": "p"})
    after = Keyring.from_keys(f"{new},{old}")
    assert after.open(sealed) == {"password": "p"}
    assert after.needs_reseal(sealed)
    fresh = after.reseal(sealed)
    assert not after.needs_reseal(fresh) and fresh.startswith(key_id(new) + ":")
    assert Keyring.from_keys(new).open(fresh) == {"password": "p"}


def test_a_missing_key_is_named_not_leaked() -> None:
    key = generate_key()
    sealed = Keyring.from_keys(key).seal("s3cret")
    other = Keyring.from_keys(generate_key())
    with pytest.raises(SecretKeyError) as err:
        other.open(sealed)
    assert key_id(key) in str(err.value) and key not in str(err.value)


def test_a_tampered_token_is_refused() -> None:
    ring = Keyring.from_keys(generate_key())
    sealed = ring.seal("value")
    with pytest.raises(SecretKeyError, match="corrupt"):
        ring.open(sealed[:-4] + "AAAA")


def test_a_malformed_key_names_its_position() -> None:
    with pytest.raises(SecretKeyError, match="key #2 is not a Fernet key"):
        Keyring.from_keys(generate_key() + ",not-a-key")
    with pytest.raises(SecretKeyError, match="holds no key"):
        Keyring.from_keys(" , ")


def test_unset_key_is_generated_once_into_home_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url="postgresql://x")
    first = Keyring.from_settings(settings)
    path = tmp_path / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Keyring.from_settings(settings)
    assert again.primary_id == first.primary_id
    assert again.open(first.seal("x")) == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no temp file left behind


def test_configured_key_wins_over_home(tmp_path: Path) -> None:
    key = generate_key()
    ring = Keyring.from_settings(Settings(home=tmp_path, database_url="postgresql://x", secret_key=key))
    assert ring.primary_id == key_id(key)
    assert not (tmp_path / "secret_key").exists()


class _Config(BaseModel):
    url: str
    token: SecretStr
    password: SecretStr | None = None


def test_the_secret_field_convention() -> None:
    assert secret_fields(_Config) == {"token", "password"}
    config = _Config(url="https://x", token=SecretStr("t0k"))
    public, hidden = split_secrets(config)
    assert public == {"url": "https://x"} and hidden == {"token": "t0k"}
    assert "t0k" not in repr(config) and "t0k" not in str(config)
    assert redacted(_Config, public) == {"url": "https://x", "token": None, "password": None}
    # A PUT that leaves a secret out (or null) keeps the stored one; a new value replaces it.
    assert merge_secrets(_Config, {"url": "u", "token": None}, hidden)["token"] == "t0k"
    assert merge_secrets(_Config, {"url": "u", "token": "new"}, hidden)["token"] == "new"

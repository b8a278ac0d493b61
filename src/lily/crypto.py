"""Secrets at rest: credentials Lily keeps in its database (channel tokens, webhook signing keys,
connector passwords) are sealed with a key Lily holds outside the database.

The key ring comes from ``LILY_SECRET_KEY``: comma-separated Fernet keys (make one with
``python -c "from lily.crypto import generate_key; print(generate_key())"``). The first key
seals, every key opens, so a key is rotated by putting a new one first and keeping the old ones until
the scheduled job ``reseal_secrets`` has re-sealed everything with the new one (``lily jobs`` shows its
runs; then drop the old key). Unset, a key is generated once into ``LILY_HOME/secret_key`` (mode 0600) —
fine for one machine; several machines must share ``LILY_SECRET_KEY``.

A sealed value is ``<key id>:<Fernet token>``; the key id (8 hex digits of the key's SHA-256) says which
key sealed it, so the start-up check (:func:`lily.store.sealed.check_keys`) can refuse to start a
process that lacks a key the database needs — with a message naming the table, the column and the key
id — instead of starting and then failing every delivery or crawl.

How a connector (or channel) keeps a credential:

1. In its pydantic ``Config``, type every secret field as ``pydantic.SecretStr`` (or ``SecretStr | None``).
   ``SecretStr`` never shows its value in ``repr``, ``str`` or logs; read it with ``get_secret_value()``
   only where it is used (an HTTP header, a connection string).
2. Store the config in two columns: :func:`split_secrets` gives the public part (a jsonb column) and the
   secret part, which goes through :meth:`Keyring.seal` into a ``text`` column whose name ends in
   ``_sealed``. That suffix is the whole registration: the start-up check and the re-sealing job find
   such columns through ``information_schema``. They run as ``lily_pipeline`` across tenants, so the
   table needs, besides the usual tenant policy::

       CREATE POLICY pipeline_reads_sealed ON my_table FOR SELECT TO lily_pipeline USING (true);
       CREATE POLICY pipeline_reseals ON my_table FOR UPDATE TO lily_pipeline USING (true) WITH CHECK (true);
       GRANT SELECT, UPDATE (my_secrets_sealed) ON my_table TO lily_pipeline;

3. In API responses, return :func:`redacted` (secret fields become ``null``); on PUT, a secret field left
   out (or ``null``) keeps the stored value (:func:`merge_secrets`), so GET → edit → PUT works without
   the client ever holding the secret.
4. Never log a config, a sealed value or an opened one; log the config's public part if anything.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets as _random
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from lily.config import Settings

SEALED_SUFFIX = "_sealed"
KEY_FILE = "secret_key"


class SecretKeyError(RuntimeError):
    """The key ring is unusable, or a sealed value cannot be opened with it. The message never holds a
    key or a secret."""


def generate_key() -> str:
    return Fernet.generate_key().decode()


def key_id(key: bytes | str) -> str:
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()[:8]


def _parse(keys: Sequence[str], source: str) -> list[bytes]:
    out: list[bytes] = []
    for i, key in enumerate(k.strip() for k in keys):
        if not key:
            continue
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise SecretKeyError(
                f"{source}: key #{i + 1} is not a Fernet key (32 url-safe base64-encoded bytes); "
                'make one with: python -c "from lily.crypto import generate_key; print(generate_key())"'
            ) from None
        out.append(key.encode())
    if not out:
        raise SecretKeyError(f"{source} holds no key")
    return out


def _generated_key(home: Path) -> str:
    """The key kept in ``home``, created (mode 0600) by whichever process gets there first."""
    path = home / KEY_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        tmp = home / f".{KEY_FILE}.{os.getpid()}.{_random.token_hex(4)}"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_key() + "\n")
        try:
            os.link(tmp, path)  # atomic: a concurrent first start keeps whichever key landed first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


class Keyring:
    """The keys that seal and open secrets. The first key seals; all open."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise SecretKeyError("a key ring needs at least one key")
        self._fernets = {key_id(k): Fernet(k) for k in keys}
        self.primary_id = key_id(keys[0])
        self._multi = MultiFernet([Fernet(k) for k in keys])

    @classmethod
    def from_keys(cls, keys: str | Sequence[str], source: str = "LILY_SECRET_KEY") -> Keyring:
        listed = keys.split(",") if isinstance(keys, str) else list(keys)
        return cls(_parse(listed, source))

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        if settings.secret_key is not None:
            return cls.from_keys(settings.secret_key.get_secret_value())
        path = settings.resolved_home() / KEY_FILE
        return cls.from_keys(_generated_key(settings.resolved_home()), source=str(path))

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self._fernets)

    def seal(self, value: Mapping[str, Any] | str) -> str:
        """``value`` (a string or a JSON-able mapping) sealed with the first key."""
        data = orjson.dumps(value if isinstance(value, str) else dict(value))
        return f"{self.primary_id}:{self._fernets[self.primary_id].encrypt(data).decode()}"

    def open(self, sealed: str) -> Any:
        """The value :meth:`seal` was given. :class:`SecretKeyError` when no key of the ring opens it."""
        kid, sep, token = sealed.partition(":")
        fernet = self._fernets.get(kid) if sep else None
        if fernet is None:
            raise SecretKeyError(
                f"a secret was sealed with key {kid[:8]!r}, which is not in the key ring "
                f"(known: {', '.join(sorted(self._fernets))}); add that key to LILY_SECRET_KEY"
            )
        try:
            return orjson.loads(fernet.decrypt(token.encode()))
        except (InvalidToken, orjson.JSONDecodeError):
            raise SecretKeyError(f"a secret sealed with key {kid!r} does not open with it (corrupt)") from None

    def needs_reseal(self, sealed: str) -> bool:
        return not sealed.startswith(self.primary_id + ":")

    def reseal(self, sealed: str) -> str:
        """The same value sealed with the first key (the background re-encryption after a rotation)."""
        return self.seal(self.open(sealed))

    # Aliases with the names the rest of the code base may expect.
    encrypt = seal
    decrypt = open


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_secret(a) for a in typing.get_args(annotation))
    return False


def secret_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of a config model typed ``SecretStr`` (or ``SecretStr | None``)."""
    return frozenset(name for name, f in model.model_fields.items() if _is_secret(f.annotation))


def split_secrets(config: BaseModel) -> tuple[dict[str, Any], dict[str, str]]:
    """(public part, secret part) of a validated config; the secret part holds the plain values, to seal."""
    secret = secret_fields(type(config))
    public = config.model_dump(mode="json", exclude=set(secret))
    hidden: dict[str, str] = {}
    for name in secret:
        value = getattr(config, name)
        if value is not None:
            hidden[name] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return public, hidden


def merge_secrets(model: type[BaseModel], incoming: Mapping[str, Any], stored: Mapping[str, str]) -> dict[str, Any]:
    """A PUT's raw config with every secret field it left out (or sent as ``null``) taken from ``stored``."""
    merged = dict(incoming)
    for name in secret_fields(model):
        if merged.get(name) is None and name in stored:
            merged[name] = stored[name]
    return merged


def redacted(model: type[BaseModel], public: Mapping[str, Any]) -> dict[str, Any]:
    """What an API response shows of a config: the public part, each secret field as ``null``."""
    return {**public, **dict.fromkeys(secret_fields(model))}


def random_secret(nbytes: int = 24) -> str:
    """A Standard Webhooks signing secret, ``whsec_`` and base64."""
    return "whsec_" + base64.b64encode(_random.token_bytes(nbytes)).decode()

"""Secrets given as values or as references resolved where they are used.

A `Secret` never shows its value: not in repr, str, display data, exceptions
or logs. One given by reference (an environment variable or a file) pickles
as the reference only, so the pipeline graph sent to workers holds no secret;
each worker resolves it when it opens a connection. One given as a value
pickles masked with a random pad, so it never stands in clear text there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from tdmq_beam.errors import ConfigurationError

__all__ = ["Secret", "SecretLike", "as_secret", "secret_reference"]


class Secret:
    """A password, secret key or private-key passphrase.

    Create one with `Secret.env`, `Secret.file` or `Secret.value`; a plain
    string given where a secret goes becomes `Secret.value`.
    """

    __slots__ = ("_ref", "_source")

    def __init__(self, source: Literal["value", "env", "file"], ref: str) -> None:
        if source not in ("value", "env", "file"):
            raise ConfigurationError("a secret's source is value, env or file")
        if not isinstance(ref, str) or (source != "value" and not ref):
            raise ConfigurationError(f"a secret from {source} needs a non-empty name")
        self._source = source
        self._ref = ref

    @classmethod
    def value(cls, value: str) -> Secret:
        """A secret given directly; it is pickled with the pipeline."""
        return cls("value", value)

    @classmethod
    def env(cls, name: str) -> Secret:
        """A secret read from environment variable ``name`` where it is used."""
        return cls("env", name)

    @classmethod
    def file(cls, path: str | os.PathLike) -> Secret:
        """A secret read from the file at ``path`` (trailing newline removed) where it is used."""
        return cls("file", os.fspath(path))

    @property
    def source(self) -> str:
        return self._source

    def describe(self) -> str:
        """Where the secret comes from, safe to show: ``<secret>``, ``env:NAME``, ``file:PATH``."""
        return "<secret>" if self._source == "value" else f"{self._source}:{self._ref}"

    def resolve(self) -> str:
        """The secret's value.

        Raises:
            ConfigurationError: the variable is unset or the file unreadable
                (the message names the variable or file, never a value).
        """
        if self._source == "value":
            return self._ref
        if self._source == "env":
            value = os.environ.get(self._ref)
            if value is None:
                raise ConfigurationError(f"environment variable {self._ref} is not set")
            return value
        try:
            return Path(self._ref).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigurationError(f"cannot read secret file {self._ref}: {exc.strerror}") from None

    def __repr__(self) -> str:
        return f"Secret({self.describe()})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and (self._source, self._ref) == (other._source, other._ref)

    def __hash__(self) -> int:
        return hash((self._source, self._ref))

    def __reduce__(self):
        if self._source == "value":
            # Masked so the value never stands in clear text in a pickled pipeline
            # graph. Masking is not encryption: use env or file references to keep
            # a secret out of the graph entirely.
            pad = os.urandom(len(self._ref.encode("utf-8")))
            masked = bytes(a ^ b for a, b in zip(self._ref.encode("utf-8"), pad, strict=True))
            return _unmask, (pad, masked)
        return Secret, (self._source, self._ref)


def _unmask(pad: bytes, masked: bytes) -> Secret:
    return Secret.value(bytes(a ^ b for a, b in zip(masked, pad, strict=True)).decode("utf-8"))


SecretLike = str | Secret


def as_secret(value: SecretLike | None) -> Secret | None:
    """A `Secret` for a secret or plain string; None stays None."""
    if value is None or isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret.value(value)
    raise TypeError(f"expected a str or Secret, got {type(value).__name__}")


def secret_reference(what: str, env: str | None, file: str | None) -> Secret | None:
    """The `Secret` read from environment variable ``env`` or from file ``file``; None without either.

    Args:
        what: the secret's name in the complaint when both are given.

    Raises:
        ConfigurationError: both are given.
    """
    if env and file:
        raise ConfigurationError(f"give the {what} by environment variable or by file, not both")
    if env:
        return Secret.env(env)
    if file:
        return Secret.file(file)
    return None

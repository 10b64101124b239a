"""Passwords: from the TOML, a ``password_file`` or a systemd credential, held
as ``SecretStr``; read only for the cameras a process runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Self

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.functional_validators import ModelWrapValidatorHandler

from edged.config.base import MAX_SECRET_BYTES, Model, context_of, read_bounded, resolve_path

PASSWORD_FIELDS = ("password", "password_file", "password_credential")


def _read_secret(path: Path) -> str:
    """The first line of ``path``; errors name the file, never its content."""
    try:
        text = read_bounded(path, MAX_SECRET_BYTES).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {path}: not UTF-8 text") from None
    except ValueError as exc:
        raise ValueError(f"{exc}: {path}") from None
    secret = text.partition("\n")[0].rstrip("\r")
    if not secret:
        raise ValueError(f"{'first line is' if text.strip() else 'file is'} empty: {path}")
    return secret


def _secret_needed(info: ValidationInfo, owner: str | None) -> bool:
    """Whether ``owner``'s secret is read: not when the config is loaded for some
    cameras only (``edged run --camera``) and it is another camera's, or [defaults]'
    (``""``: the cameras run inherit it and read it themselves). Their structure is
    checked all the same; their secret files are not needed. ``owner`` None: MQTT's."""
    wanted = context_of(info).get("secret_cameras")
    return wanted is None or owner is None or owner in wanted


def _field_owner(info: ValidationInfo) -> str | None:
    # Set by PasswordSettings._scope_secret around the fields of the model being validated.
    owner = context_of(info).get("secret_owner")
    return owner if isinstance(owner, str) else None


def _credential_path(name: str, info: ValidationInfo, owner: str | None) -> Path | None:
    """The credential's file; None when it cannot be known here and need not be."""
    if not _secret_needed(info, owner):
        return None
    context = context_of(info)
    folder = context.get("credentials_dir") or os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        if context.get("credentials_optional"):
            return None  # check-config in a shell: the unit's LoadCredential= sets it
        raise ValueError(
            f"$CREDENTIALS_DIRECTORY is not set: this unit needs LoadCredential={name}:FILE "
            "(systemd sets it); use password_file outside systemd"
        )
    return Path(folder) / name


class PasswordSettings(Model):
    """A password from the file itself, a file, or a systemd credential: at most one."""

    password: SecretStr | None = Field(
        None, min_length=1, description="The password in this file (prefer password_file)."
    )
    password_file: Path | None = Field(
        None, description="File whose first line is the password (relative to the config)."
    )
    password_credential: str | None = Field(
        None,
        min_length=1,
        description="Name of a file in $CREDENTIALS_DIRECTORY holding the password "
        "(systemd LoadCredential=).",
    )

    _secret: SecretStr | None = PrivateAttr(default=None)

    @classmethod
    def _secret_owner(cls, data: Any) -> str | None:
        """Whose secret this is, for :func:`_secret_needed`; None: always needed."""
        return None

    @model_validator(mode="wrap")
    @classmethod
    def _scope_secret(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        context = context_of(info)
        outer = context.get("secret_owner")
        context["secret_owner"] = cls._secret_owner(data)
        try:
            return handler(data)
        finally:
            context["secret_owner"] = outer

    @field_validator("password_file")
    @classmethod
    def _check_password_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            value = resolve_path(value, info)
            if _secret_needed(info, _field_owner(info)):
                _read_secret(value)
        return value

    @field_validator("password_credential")
    @classmethod
    def _check_credential(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            if "/" in value or value in (".", ".."):
                raise ValueError("expected a credential name, not a path")
            path = _credential_path(value, info, _field_owner(info))
            if path is not None:
                _read_secret(path)
        return value

    def password_sources(self) -> list[str]:
        """The password fields that are set (at most one is valid)."""
        return [f for f in PASSWORD_FIELDS if getattr(self, f) is not None]

    def _passwordproblems(self, url_password: bool = False) -> list[tuple[str, str]]:
        given = self.password_sources()
        if len(given) + url_password <= 1:
            return []
        names = ", ".join(given + ["a password in the source URL"] * url_password)
        return [(given[-1], f"give only one password source; found: {names}")]

    def _load_secret(self, info: ValidationInfo) -> None:
        owner = self._secret_owner(self.__dict__)
        if not _secret_needed(info, owner):
            return
        if self.password_file is not None:
            self._secret = SecretStr(_read_secret(self.password_file))
        elif self.password_credential is not None:
            path = _credential_path(self.password_credential, info, owner)
            if path is not None:
                self._secret = SecretStr(_read_secret(path))

    def password_value(self) -> str | None:
        """The password from whichever field gave it, or None. Keep it out of logs."""
        if self.password is not None:
            return self.password.get_secret_value()
        return self._secret.get_secret_value() if self._secret is not None else None

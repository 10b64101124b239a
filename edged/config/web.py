"""``[web]``: the read-only page on the metrics listener (see ``edged.web``)."""

from __future__ import annotations

from typing import Any, Self

from pydantic import Field, ValidationInfo, model_validator

from edged.config.base import invalid
from edged.config.listen import is_loopback, split_listen
from edged.config.secrets import PasswordSettings


class WebConfig(PasswordSettings):
    """``[web]``: what each camera sees, in a browser, served beside /metrics.

    Frames are pictures of people's homes: on loopback (the default listener)
    the page is on unless ``enabled = false``; on any other address it is off
    unless enabled, and then only behind HTTP basic auth (``username`` and a
    password from ``password_file`` or ``password_credential``)."""

    enabled: bool | None = Field(
        None,
        description="Serve the page; default: on where the listener is loopback, else off.",
    )
    max_fps: float = Field(
        5.0, ge=0.2, le=30, description="Frames per second a camera's picture is encoded at most."
    )
    quality: int = Field(80, ge=1, le=100, description="JPEG quality of the pictures, 1-100.")
    username: str = Field(
        "edged", min_length=1, max_length=64, description="User name for HTTP basic auth."
    )

    @classmethod
    def _secret_owner(cls, data: Any) -> str | None:
        return None  # always read: the page is served by every process

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        if ":" in self.username:
            raise invalid([("username", "a user name cannot hold ':'")], type(self).__name__)
        if problems := self._passwordproblems():
            raise invalid(problems, type(self).__name__)
        self._load_secret(info)
        return self

    @property
    def has_password(self) -> bool:
        return bool(self.password_sources())

    def serves(self, listen: str) -> bool:
        """Whether the page is on for a listener at ``listen`` (``host:port``)."""
        if self.enabled is not None:
            return self.enabled
        return is_loopback(split_listen(listen)[0])

    def problem(self, listen: str) -> str | None:
        """Why the page cannot be served on ``listen`` as configured, if it cannot."""
        if (
            self.serves(listen)
            and not self.has_password
            and not is_loopback(split_listen(listen)[0])
        ):
            return (
                f"the page shows camera pictures and {listen} is not loopback: set "
                "password_file or password_credential (HTTP basic auth), or enabled = false"
            )
        return None

"""A camera's processor: ``type`` and the options its ``Options`` validate."""

from __future__ import annotations

from typing import Any, Self

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.functional_validators import ModelWrapValidatorHandler

from edged.config.base import Model, explain_unknown, invalid
from edged.errors import PluginError
from edged.plugin import error_text
from edged.processor import resolve_processor

# --- processors ----------------------------------------------------------------------


class ProcessorConfig(Model):
    """``[cameras.NAME.processor]``: ``type`` and the processor's own options beside it."""

    type: str = Field(
        min_length=1,
        description="Built-in or registered processor name, or 'package.module:ClassName'.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The options as validated by the processor's Options, dumped (for show; "
        "build_options() gives the validated object).",
    )

    _built: BaseModel | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _validate_options(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        if isinstance(data, str):
            data = {"type": data}  # processor = "motion"
        if not isinstance(data, dict):
            return handler(data)
        if not isinstance(data.get("type"), str):
            return handler({"type": data["type"]} if "type" in data else {})
        type_name = data["type"]
        options = {k: v for k, v in data.items() if k != "type"}
        try:
            model = resolve_processor(type_name).Options
        except PluginError as exc:
            raise invalid([("type", str(exc))], cls.__name__) from None
        if set(options) == {"options"} and "options" not in model.model_fields:
            options = options["options"]  # the shape model_dump() gives
        try:
            validated = model.model_validate(options, context=info.context)
            shown = validated.model_dump()
        except ValidationError as exc:
            raise (explain_unknown(exc, model.model_fields, {}, cls.__name__) or exc) from None
        except Exception as exc:
            # A plugin's bug (a validator raising TypeError, say) is reported, not a crash.
            message = f"{type_name!r}: its Options raised {error_text(exc)}"
            raise invalid([("type", message)], cls.__name__) from None
        config = handler({"type": type_name, "options": shown})
        # The worker gets this very object: validating the dump again would apply
        # aliases and transforming validators twice.
        config._built = validated
        return config

    def build_options(self) -> BaseModel:
        """The options as an instance of the processor's ``Options`` model, as
        validated from the config table."""
        if self._built is None:  # made with model_construct(): never validated
            self._built = resolve_processor(self.type).Options.model_validate(self.options)
        return self._built

    @property
    def pixel_format(self) -> str:
        """What the processor takes: ``"bgr"``, ``"gray"`` or ``"any"``."""
        return resolve_processor(self.type).pixel_format


def null_processor() -> ProcessorConfig:
    return ProcessorConfig(type="null")

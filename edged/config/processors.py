"""A camera's processor: ``type`` and the options its ``Options`` validate."""

from __future__ import annotations

import builtins
from typing import Any, ClassVar, Self

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.functional_validators import ModelWrapValidatorHandler
from pydantic_core import InitErrorDetails, PydanticCustomError

from edged.config.base import Model, explain_unknown, invalid
from edged.errors import PluginError
from edged.plugin import error_text
from edged.processor import resolve_processor
from edged.units import Duration

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
    # builtins.type: in this class body `type` is the field.
    _own_model: ClassVar[builtins.type[BaseModel] | None] = None
    """The keys of the table that are edged's settings, not the processor's options."""

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
        own_keys: set[str] = set(cls._own_model.model_fields) if cls._own_model else set()
        own = {k: v for k, v in data.items() if k in own_keys}
        options = {k: v for k, v in data.items() if k != "type" and k not in own}
        try:
            model = resolve_processor(type_name).Options
        except PluginError as exc:
            raise cls._with_own(invalid([("type", str(exc))], cls.__name__), own) from None
        if set(options) == {"options"} and "options" not in model.model_fields:
            options = options["options"]  # the shape model_dump() gives
        try:
            validated = model.model_validate(options, context=info.context)
            shown = validated.model_dump()
        except ValidationError as exc:
            better = explain_unknown(exc, model.model_fields, {}, cls.__name__) or exc
            raise cls._with_own(better, own) from None
        except Exception as exc:
            # A plugin's bug (a validator raising TypeError, say) is reported, not a crash.
            message = f"{type_name!r}: its Options raised {error_text(exc)}"
            raise invalid([("type", message)], cls.__name__) from None
        config = handler({"type": type_name, "options": shown, **own})
        # The worker gets this very object: validating the dump again would apply
        # aliases and transforming validators twice.
        config._built = validated
        return config

    @classmethod
    def _with_own(cls, exc: ValidationError, own: dict[str, Any]) -> ValidationError:
        """``exc`` and the errors of edged's own keys, so that all are reported at once."""
        if cls._own_model is None:
            return exc
        try:
            cls._own_model.model_validate(own)
        except ValidationError as more:
            details = [
                InitErrorDetails(
                    type=PydanticCustomError(e["type"], e["msg"]), loc=e["loc"], input=e["input"]
                )
                for e in (*exc.errors(), *more.errors())
            ]
            return ValidationError.from_exception_data(cls.__name__, details)
        return exc

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


class PoolSettings(Model):
    """What ``[processors.NAME]`` sets beside ``type`` and the processor's options."""

    instances: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes, each with its own copy of the processor; its "
        "cameras are shared among them in config order.",
    )
    batch_size: int = Field(
        1,
        ge=1,
        le=256,
        description="At most this many frames (each of another camera) per call of "
        "process_batch(); 1: process() per frame.",
    )
    batch_wait: Duration = Field(
        0.01,
        ge=0,
        le=1,
        description="How long a batch that is not full waits for more cameras' frames.",
    )


class SharedProcessorConfig(ProcessorConfig, PoolSettings):
    """``[processors.NAME]``: a processor that cameras name (``processor = "NAME"``),
    loaded once per instance and shared by them; its own options beside ``type``."""

    _own_model: ClassVar[builtins.type[BaseModel] | None] = PoolSettings

    def plain(self) -> ProcessorConfig:
        """The ``type`` and options alone, as a camera's ``processor``."""
        plain = ProcessorConfig.model_construct(type=self.type, options=self.options)
        plain._built = self._built
        return plain


def null_processor() -> ProcessorConfig:
    return ProcessorConfig(type="null")

"""Loading plugin classes: one rule for ``"package.module:ClassName"``.

Processors (:func:`edged.processor.resolve_processor`) and sources
(:func:`edged.source.resolve_source`) name their plugins the same way; a
plugin's own mistakes (an import that fails, even a ``sys.exit()`` at import)
become a :class:`~edged.errors.PluginError`, and what a plugin says in an
error is scrubbed of secrets by :func:`error_text`.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from edged.errors import PluginError
from edged.redact import scrub

__all__ = ["error_text", "import_class"]


def error_text(exc: BaseException) -> str:
    """``exc`` as one line for logs and config errors: for a pydantic ValidationError
    only each error's location and message (its ``input_value=`` may be a secret
    option), for anything else the message with URL passwords scrubbed."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors(include_url=False, include_input=False)
        )
    return scrub(f"{type(exc).__name__}: {exc}")


def import_class(spec: str) -> type[Any]:
    """The class ``spec`` (``"package.module:ClassName"``) names; :class:`PluginError`
    saying why if it cannot be imported or is not a class."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        # A plugin's own mistake (even sys.exit() at import) is a config error, not a crash.
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing and (module_name + ".").startswith(missing + "."):
            raise PluginError(f"module {missing!r} not found") from None
        raise PluginError(f"cannot import module {module_name!r}: {error_text(exc)}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise PluginError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, type):
        raise PluginError(f"{spec!r} is not a class")
    return obj

"""`CloudError`: a cloud API refusal as the emulator answers it, and the parameter readers that raise it."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["CloudError", "integer_parameter", "string_parameter"]


class CloudError(Exception):
    """Answered as HTTP 200 ``{"Response": {"Error": {"Code": code, "Message": message}}}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def integer_parameter(params: dict[str, Any], name: str, default: int) -> int:
    """An integer parameter, sent as a JSON number or as a string of digits (as the SDK's
    string fields are): ``5`` and ``"5"`` mean the same."""
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value))
    ):
        raise CloudError("InvalidParameterValue", f"{name} must be an integer, got {value!r}")
    return int(value)


def string_parameter(params: dict[str, Any], name: str, *, required: bool = True) -> str:
    """A string parameter; ``MissingParameter`` when a required one is absent or empty."""
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise CloudError("MissingParameter", f"the parameter {name} is required")
        return ""
    if not isinstance(value, str):
        raise CloudError("InvalidParameterValue", f"{name} must be a string, got {value!r}")
    return value

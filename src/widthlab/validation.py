"""The base of every validated config (training, study): frozen, unknown keys refused, numbers that are numbers.

pydantic's lax mode reads ``true`` as the integer 1 and accepts ``.inf`` and ``.nan`` as floats: ``epochs: true``
would train one epoch and ``lr: .inf`` would diverge every run. A config is data a person typed, so both are
errors here.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _numeric(annotation: Any) -> bool:
    """Whether a field's type is a number (int or float, optionally None), not bool (fields of richer types check
    their own values)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else \
        (annotation,)
    return bool(set(args) & {int, float}) and set(args) <= {int, float, type(None)}


class ConfigModel(BaseModel):
    """Frozen, `extra="forbid"`, no inf/NaN floats, and no booleans where a number is expected."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if isinstance(data.get(name), bool) and _numeric(field.annotation):
                    raise ValueError(f"{name} must be a number, got {data[name]!r}")
        return data

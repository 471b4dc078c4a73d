"""Resistance functions R(L): how much a repetition of length L costs (the paper's ablations).

Each form is a small pydantic model with ``values(max_n) -> [R(0), ..., R(max_n)]``; the plugin
turns that list into a lookup tensor once. ``R(0) = 0`` always: a new node meets no resistance.

======== ================================= ===========================================
form     R(L) for L >= 1                   reference default
======== ================================= ===========================================
table    ``values[L]``                     ``[0, 1, 3, 4, 5, 5]`` (α = 0.2)
constant ``value``                         ``2``
log      ``scale · log_base(1 + L)``       ``base = 6``, ``scale = 5`` (= 1 / 0.2)
exp      ``scale · base ** L``             ``base = 1.5``, ``scale = 0.5``
======== ================================= ===========================================

Example::

    >>> [round(r, 3) for r in LogResistance().values_for(3)]
    [0.0, 1.934, 3.066, 3.869]
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_TABLE = [0.0, 1.0, 3.0, 4.0, 5.0, 5.0]


class TableResistance(BaseModel):
    """``R(L) = values[L]``: one value for each L = 0 .. max_n."""

    model_config = ConfigDict(extra="forbid")
    form: Literal["table"] = "table"
    values: list[float] = Field(default_factory=lambda: list(DEFAULT_TABLE),
                                description="R(0), R(1), ..., R(max_n); R(0) must be 0")

    @field_validator("values")
    @classmethod
    def _check(cls, v: list[float]) -> list[float]:
        if not v or v[0] != 0:
            raise ValueError("resistance.values must start with R(0) = 0 (a new node has no resistance)")
        if any(not math.isfinite(x) or x < 0 for x in v):
            raise ValueError(f"resistance.values must be finite and >= 0, got {v}")
        return v

    def values_for(self, max_n: int) -> list[float]:
        if len(self.values) != max_n + 1:
            raise ValueError(
                f"resistance.values needs max_ngram + 1 = {max_n + 1} entries (R(0) .. R({max_n})), "
                f"got {len(self.values)}"
            )
        return [float(x) for x in self.values]


class ConstantResistance(BaseModel):
    """``R(L) = value`` for every L >= 1."""

    model_config = ConfigDict(extra="forbid")
    form: Literal["constant"] = "constant"
    value: float = Field(2.0, ge=0, allow_inf_nan=False)

    def values_for(self, max_n: int) -> list[float]:
        return [0.0] + [self.value] * max_n


class LogResistance(BaseModel):
    """``R(L) = scale · log(1 + L) / log(base)`` for L >= 1."""

    model_config = ConfigDict(extra="forbid")
    form: Literal["log"] = "log"
    base: float = Field(6.0, gt=1, allow_inf_nan=False)
    scale: float = Field(5.0, ge=0, allow_inf_nan=False)

    def values_for(self, max_n: int) -> list[float]:
        return [0.0] + [self.scale * math.log(1 + n) / math.log(self.base) for n in range(1, max_n + 1)]


class ExpResistance(BaseModel):
    """``R(L) = scale · base ** L`` for L >= 1."""

    model_config = ConfigDict(extra="forbid")
    form: Literal["exp"] = "exp"
    base: float = Field(1.5, gt=0, allow_inf_nan=False)
    scale: float = Field(0.5, ge=0, allow_inf_nan=False)

    def values_for(self, max_n: int) -> list[float]:
        return [0.0] + [self.scale * self.base ** n for n in range(1, max_n + 1)]


Resistance = Annotated[
    Union[TableResistance, ConstantResistance, LogResistance, ExpResistance],
    Field(discriminator="form"),
]

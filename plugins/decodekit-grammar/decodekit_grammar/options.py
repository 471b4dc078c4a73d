"""The ``grammar`` plugin's options: one constraint per plugin entry."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class GrammarOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    regex: str | None = Field(None, description="the output must match this regular expression (whole output)")
    choice: list[str] | None = Field(None, description="the output must be one of these strings")
    json_schema: dict[str, Any] | str | None = Field(
        None, description="the output must be JSON valid under this schema (a dict, a JSON string or a file path)")
    lark: str | None = Field(
        None, description="a lark CFG: a name in grammars/ (json, arithmetic, ...), a path, or inline text")
    start: str = Field("start", description="the lark grammar's start rule")
    backend: Literal["auto", "llguidance", "outlines"] = Field(
        "auto", description="auto = outlines-core for a regex or choice whose states allow many tokens and whose "
                            "index stays small (precomputed masks), else llguidance (JSON Schema, lark, the rest); "
                            "llguidance = compile in milliseconds, masks by walking the token trie; "
                            "outlines = outlines-core with precomputed per-state masks (regex, choice, json_schema)")
    mode: Literal["constrained", "aligned"] = Field(
        "constrained", description="aligned = ASAp grammar-aligned sampling (use strategy: sample, temperature 1)")
    close_within_budget: bool = Field(
        False, description="finish the output within max_new_tokens: when the tokens left come down to a short "
                           "deterministic way to close it (string ends, brackets, minimal required values), "
                           "follow that, so the output ends valid instead of cut off; outputs that never get "
                           "that close to the budget are unchanged")
    cache: bool = Field(True, description="cache compiled outlines indexes on disk under decodekit's cache dir")

"""Pipeline files (YAML, TOML, JSON) and their validation with pydantic.

A pipeline::

    model: smollm2-135m       # alias or local HF model directory
    device: auto              # cpu | cuda | cuda:N | auto
    dtype: auto               # auto | float32 | bfloat16 | float16
    cpu_kernels: default      # default | onednn (CPU float32 or bfloat16: pre-packed oneDNN linears)
    chat: true                # prompts go through the chat template when the tokenizer has one
    decoding: {strategy: sample, max_new_tokens: 128, temperature: 0.7, top_p: 0.95, seed: 0}
    plugins:                  # ordered: rescore order follows this list
      - name: some_plugin
        some_option: 3
      - other_plugin          # a bare name: the plugin with its default options

The decoding block's own fields are below; every other field is an option of the strategy and
is validated by that strategy's options model. Every plugin entry is validated by its plugin's
options model, so a typo is an error naming the file, the plugin and the field.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from decodekit.errors import ConfigError
from decodekit.models import DEFAULT_MODEL
from decodekit.plugins import PluginInfo, Registry, get_registry


class DecodingConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    strategy: str = Field("greedy", description="a registered strategy: greedy, sample, beam, ...")
    max_new_tokens: int = Field(128, ge=1)
    seed: int | list[int] | None = Field(
        None, description="seeds every row's random generator; a list gives each prompt of a batch its own "
                          "seed (a batch then equals its prompts run one by one with those seeds)")
    stop: list[str] = Field(default_factory=list, description="stop when the text contains any of these")
    ignore_eos: bool = Field(False, description="keep going past the end-of-sequence token")

    def strategy_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    cpu_kernels: Literal["default", "onednn"] = Field(
        "default", description="onednn: run the linear layers of a CPU float32 or bfloat16 model through oneDNN with "
                               "pre-packed weights (multi-token passes cost far less: speculative decoding "
                               "gains most; see decodekit/onednn.py)")
    chat: bool = True
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    plugins: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("plugins", mode="before")
    @classmethod
    def _names_are_entries(cls, value: Any) -> Any:
        """A bare plugin name (``plugins: [speculative]``) is the entry ``{name: ...}`` with its defaults."""
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value


@dataclass
class Resolved:
    """A validated pipeline: the strategy and each plugin with its validated options."""

    config: PipelineConfig
    strategy: PluginInfo
    strategy_options: BaseModel
    plugins: list[tuple[str, PluginInfo, BaseModel]]  # (instance name, info, options)


def _format(err: ValidationError, prefix: str, model: type[BaseModel] | None = None) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        where = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown option"
            known = list(model.model_fields) if model is not None else []
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
            elif known:
                msg += f"; options are {', '.join(known)}"
        parts.append(f"{where}: {msg}" + (f" (got {e['input']!r})" if e["type"] != "extra_forbidden" and "input" in e and not isinstance(e["input"], dict) else ""))
    return "; ".join(parts)


def read_file(path: str | Path) -> dict[str, Any]:
    """Parse a pipeline file by its extension; errors name the file (and line for YAML/JSON)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such pipeline file")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: unknown pipeline format {suffix!r}; use .yaml, .yml, .toml or .json")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a pipeline must be a mapping with model / decoding / plugins")
    return data


def apply_overrides(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars; list indices allowed)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. decoding.max_new_tokens=32")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        parts = key.strip().split(".")
        node: Any = data
        for k, part in enumerate(parts):
            last = k == len(parts) - 1
            if isinstance(node, list):
                try:
                    idx = int(part)
                    node[idx]
                except (ValueError, IndexError):
                    raise ConfigError(f"--set {item!r}: {'.'.join(parts[:k])} has no element {part!r}") from None
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
                    if not isinstance(node, (dict, list)):
                        raise ConfigError(f"--set {item!r}: {'.'.join(parts[:k + 1])} is not a mapping")
    return data


def validate(data: dict[str, Any] | PipelineConfig, source: str = "<pipeline>",
             registry: Registry | None = None) -> Resolved:
    """Validate a pipeline without loading any model."""
    registry = registry or get_registry()
    if isinstance(data, PipelineConfig):
        cfg = data
    else:
        try:
            cfg = PipelineConfig.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"{source}: {_format(e, '', PipelineConfig)}") from None
    strategy = _get(registry, cfg.decoding.strategy, "strategy", f"{source}: decoding.strategy")
    try:
        strategy_options = strategy.options.model_validate(cfg.decoding.strategy_options())
    except ValidationError as e:
        raise ConfigError(
            f"{source}: decoding (strategy {strategy.name!r}): {_format(e, '', strategy.options)}"
        ) from None
    plugins = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(cfg.plugins):
        if "name" not in entry:
            raise ConfigError(f"{source}: plugins[{i}]: missing 'name'")
        name = entry["name"]
        info = _get(registry, name, "plugin", f"{source}: plugins[{i}]")
        opts = {k: v for k, v in entry.items() if k != "name"}
        try:
            options = info.options.model_validate(opts)
        except ValidationError as e:
            raise ConfigError(f"{source}: plugins[{i}] ({name}): {_format(e, '', info.options)}") from None
        seen[name] = seen.get(name, 0) + 1
        instance_name = name if seen[name] == 1 else f"{name}#{seen[name]}"
        plugins.append((instance_name, info, options))
    _check_compatible(strategy, plugins, source)
    return Resolved(cfg, strategy, strategy_options, plugins)


def _check_compatible(strategy: PluginInfo, plugins: list[tuple[str, PluginInfo, BaseModel]], source: str) -> None:
    """Reject, before any model loads, pairs that cannot compose.

    Declared by class attributes of the factories: a strategy with ``accepts_drafts = False``
    (beam search variants) cannot verify drafts, so no plugin may implement ``propose``; a plugin
    with ``strategies = ("greedy", ...)`` works only under those strategies.
    """
    for i, (name, info, _) in enumerate(plugins):
        if "propose" in info.hooks and not getattr(strategy.factory, "accepts_drafts", True):
            raise ConfigError(
                f"{source}: plugins[{i}] ({name}) proposes drafts, but strategy {strategy.name!r} does not "
                f"verify drafts (it re-chooses every row each step); use strategy greedy or sample")
        allowed = getattr(info.factory, "strategies", None)
        if allowed is not None and strategy.name not in allowed:
            raise ConfigError(
                f"{source}: plugins[{i}] ({name}) works only with strategy {' or '.join(map(repr, allowed))}, "
                f"not {strategy.name!r}")


def _get(registry: Registry, name: Any, kind: str, where: str) -> PluginInfo:
    if not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string, got {name!r}")
    try:
        return registry.get(name, kind)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None

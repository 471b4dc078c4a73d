"""The ``qstar`` plugin's options, and resolving ``reward:`` entries to callables."""

from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from decodekit.errors import ConfigError

RewardSpec = str | dict[str, Any]


class QStarOptions(BaseModel):
    """Options of ``name: qstar`` (see docs/plugins/qstar.md)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["transfer_q", "args"] = Field(
        "transfer_q", description="transfer_q: log π_ref + α·Q̂ from rollouts; args: log π_ref + w·r([s, z])")
    reward: RewardSpec = Field(..., description="a registered reward: its name, or {name: ..., <options>}")
    baseline_reward: RewardSpec | None = Field(
        None, description="r_BL the baseline is aligned to (indirect transfer); None: r_BL = r (direct)")
    baseline: str = Field("self", description='the rollout model ρ_BL: "self" (the target) or an alias/path')
    k: int = Field(10, ge=1, description="candidates: the top-k tokens of the reference model")
    num_rollouts: int = Field(4, ge=1, description="rollouts per candidate")
    rollout_len: int = Field(16, ge=0, description="tokens per rollout (capped by the remaining budget)")
    rollout_temperature: float = Field(1.0, ge=0, description="temperature of rollouts; 0 = greedy")
    alpha: float = Field(1.0, ge=0, description="transfer_q: weight of Q̂ in log π_ref + α·Q̂")
    beta: float = Field(1.0, gt=0, description="transfer_q, indirect: rollout weights exp((r − r_BL)/β)")
    w: float = Field(1.0, ge=0, description="args: weight of the reward in log π_ref + w·r")
    every: int = Field(1, ge=1, description="re-estimate at every m-th generated token; logits unchanged between")
    reward_text: Literal["completion", "full"] = Field(
        "completion", description="what the reward reads: the generated text, or prompt + generated text")
    progress: bool | None = Field(None, description="rollout progress bar; None: only when stderr is a tty")

    @field_validator("reward", "baseline_reward")
    @classmethod
    def _known_reward(cls, spec: RewardSpec | None) -> RewardSpec | None:
        if spec is not None:
            reward_options(spec)  # raises ValueError with the reward's name and bad field
        return spec

    @model_validator(mode="after")
    def _mode_fields(self) -> "QStarOptions":
        if self.mode == "args" and self.baseline_reward is not None:
            raise ValueError("baseline_reward applies to mode: transfer_q only")
        return self


def _split(spec: RewardSpec) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if "name" not in spec:
        raise ValueError("a reward given as a mapping needs 'name' (e.g. {name: count, text: e})")
    name = spec["name"]
    if not isinstance(name, str):
        raise ValueError(f"reward name must be a string, got {name!r}")
    return name, {k: v for k, v in spec.items() if k != "name"}


def reward_options(spec: RewardSpec) -> tuple[str, Any, BaseModel]:
    """``(name, info, validated options)`` for a reward spec; ValueError naming what is wrong."""
    from decodekit.plugins import get_registry

    name, raw = _split(spec)
    try:
        info = get_registry().get_reward(name)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    try:
        opts = info.options.model_validate(raw)
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(options)'}: "
                        f"{'unknown option' if err['type'] == 'extra_forbidden' else err['msg']}"
                        for err in e.errors())
        raise ValueError(f"reward {name!r}: {bad}") from None
    return name, info, opts


def build_reward(spec: RewardSpec, pipeline: Any) -> tuple[str, Callable[[list[str]], list[float]]]:
    """``(name, reward)`` for a reward spec, built with the pipeline (for its device)."""
    name, info, opts = reward_options(spec)
    return name, info.factory(opts, pipeline)

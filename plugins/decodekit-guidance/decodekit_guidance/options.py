"""The ``guidance`` plugin's options (pydantic; unknown fields are errors)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CFG_ONLY = ("guidance_scale", "negative_prompt", "negative_raw", "batch_branch")
CONTRASTIVE_ONLY = ("amateur", "amateur_context", "amateur_skip_layers", "amateur_temperature", "alpha", "beta",
                    "head")
AMATEURS = ("amateur", "amateur_context", "amateur_skip_layers")


class GuidanceOptions(BaseModel):
    """``mode: cfg`` (classifier-free guidance) or ``mode: contrastive`` (contrastive decoding)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    mode: Literal["cfg", "contrastive"] = Field("cfg", description="cfg or contrastive")
    # -- cfg -----------------------------------------------------------------------------------
    guidance_scale: float = Field(1.5, description="γ: log p_u + γ (log p_c − log p_u); 1 is a no-op")
    negative_prompt: str | list[Any] | None = Field(
        None, description="the unconditional branch's prompt: text, chat messages or token ids, or a "
                          "list with one of these (or null) per prompt of a batch; default: the last "
                          "prompt token (HF's convention)")
    negative_raw: bool = Field(False, description="encode a text negative prompt without the chat template")
    batch_branch: bool = Field(
        True, description="run the unconditional branch as extra rows of the target's own forward pass "
                          "(one pass over 2B rows); false: a second forward pass with its own cache")
    # -- contrastive ---------------------------------------------------------------------------
    amateur: Any = Field(None, description="amateur model: an alias, a local HF directory, or a loaded model "
                                           "sharing the expert's tokenizer")
    amateur_context: int | None = Field(None, ge=1, description="amateur = the expert seeing only the last n tokens")
    amateur_skip_layers: list[int] | None = Field(
        None, description="amateur = the expert with these decoder layers skipped (never layer 0)")
    amateur_temperature: float = Field(1.0, gt=0, description="τ: the amateur's log-softmax is taken of logits / τ")
    alpha: float = Field(0.1, ge=0, le=1, description="plausibility: keep x with p_exp(x) ≥ α · max p_exp")
    beta: float = Field(1.0, ge=0, description="β: score = log p_exp − β · log p_ama")
    head: Literal["allowed", "all"] = Field(
        "allowed", description="allowed: the plausible set is taken among the tokens every mask plugin "
                               "allows (max p_exp over those); all: over the whole vocabulary (Li et al. "
                               "verbatim; a mask may then rule out the whole set)")

    @model_validator(mode="after")
    def _check_mode(self) -> "GuidanceOptions":
        given = self.model_fields_set
        if self.mode == "cfg":
            wrong = [f for f in CONTRASTIVE_ONLY if f in given]
            if wrong:
                raise ValueError(f"option(s) {', '.join(wrong)} apply to mode: contrastive, not mode: cfg")
        else:
            wrong = [f for f in CFG_ONLY if f in given]
            if wrong:
                raise ValueError(f"option(s) {', '.join(wrong)} apply to mode: cfg, not mode: contrastive")
            chosen = [f for f in AMATEURS if getattr(self, f) is not None]
            if len(chosen) != 1:
                raise ValueError("mode: contrastive needs exactly one of amateur, amateur_context, "
                                 f"amateur_skip_layers (got {', '.join(chosen) or 'none'})")
        return self

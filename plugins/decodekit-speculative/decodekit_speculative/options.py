"""Options of the ``speculative`` plugin (one pydantic model; unknown fields are errors)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Proposer = Literal["prompt_lookup", "token_recycling", "draft_model", "layer_skip", "heads", "aded"]


class SpeculativeOptions(BaseModel):
    """What to draft with and how much.

    Shared: ``proposer``, ``max_draft_tokens`` (chain length or tree size cap), ``adaptive`` and
    ``verify_costs``. The other fields belong to one proposer each (named in their description).
    """

    model_config = ConfigDict(extra="forbid")

    proposer: Proposer = Field("prompt_lookup", description="prompt_lookup | token_recycling | draft_model | layer_skip | heads | aded")
    max_draft_tokens: int = Field(16, ge=1, le=256, description="most draft nodes per row and step (chain or tree)")
    adaptive: bool = Field(True, description="choose each draft's length / tree size from the recent acceptance "
                                             "and the measured cost of a target pass; False: always draft the most")
    verify_costs: dict[int, float] | None = Field(
        None, description="fixed relative cost of a target pass over s new tokens, e.g. {1: 1.0, 4: 1.6, 16: 1.9}, "
                          "instead of timing the passes (repeatable draft shapes)")

    # prompt_lookup
    ngram_min: int = Field(1, ge=1, description="prompt_lookup: shortest suffix n-gram that may match")
    ngram_max: int = Field(8, ge=1, description="prompt_lookup: suffix matches longer than this count as this long")

    # token_recycling
    top_k: int = Field(8, ge=1, le=64, description="token_recycling: next-token candidates kept per token; "
                                                   "heads: candidates per head; aded: candidates per context")
    recycle_prompt: int = Field(1024, ge=0, description="token_recycling: fill the matrix from the target's "
                                                        "scores at up to this many last prompt positions after "
                                                        "the prefill (one LM-head product over them; 0: off)")

    # draft_model
    draft: str | None = Field(None, description="draft_model: alias or local directory of a causal LM "
                                                "sharing the target's tokenizer")
    draft_threshold: float = Field(0.3, ge=0.0, le=1.0, description="draft_model / layer_skip: stop drafting "
                                                                    "when the draft's top-1 probability is below this")

    # layer_skip
    skip_layers: list[int] | None = Field(None, description="layer_skip: decoder layer indices to skip (never 0)")
    skip_ratio: float = Field(0.5, gt=0.0, lt=1.0, description="layer_skip: share of layers to skip when "
                                                               "skip_layers is not given")
    search: bool = Field(False, description="layer_skip: pick the layers to skip on the first call by measuring, "
                                            "on its prompt, how little skipping each layer changes the target's argmax")

    # aded
    explore: float = Field(0.5, ge=0.0, description="aded: weight of the PUCT exploration bonus for candidates "
                                                    "rarely drafted in their context (0: pure exploitation)")
    persist_table: bool = Field(True, description="aded: keep the tri-gram table across calls of the pipeline "
                                                  "(false: start every call from an empty table)")

    # draft_model, layer_skip
    tree: Literal["chain", "dynamic"] = Field("chain", description="draft_model / layer_skip: chain drafts, or "
                                              "dynamic trees grown by the draft's probabilities (DySpec)")

    # heads
    heads: str | None = Field(None, description="heads: directory of trained draft heads (python -m "
                                                "decodekit_speculative.train_heads); default: the shipped heads "
                                                "of smollm2-135m")
    head_kind: Literal["medusa", "hydra"] | None = Field(
        None, description="heads: medusa (independent heads) or hydra (each head also sees the token drafted "
                          "before it); picks the shipped set, or checks the kind of the heads given")

    @field_validator("verify_costs")
    @classmethod
    def _costs(cls, v: dict[int, float] | None) -> dict[int, float] | None:
        if v is None:
            return v
        if not v or any(s < 1 for s in v) or any(c <= 0 for c in v.values()):
            raise ValueError("verify_costs maps a number of new tokens (>= 1) to a positive cost, e.g. {1: 1.0, 8: 1.8}")
        return v

    @field_validator("skip_layers")
    @classmethod
    def _skips(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or 0 in v or any(i < 0 for i in v)):
            raise ValueError("skip_layers lists decoder layer indices >= 1 (layer 0 is always kept), at least one")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "SpeculativeOptions":
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) must be <= ngram_max ({self.ngram_max})")
        if self.draft is not None and self.proposer != "draft_model":
            raise ValueError(f"draft is an option of proposer draft_model, not of {self.proposer}")
        if (self.heads is not None or self.head_kind is not None) and self.proposer != "heads":
            raise ValueError(f"heads / head_kind are options of proposer heads, not of {self.proposer}")
        if self.tree == "dynamic" and self.proposer not in ("draft_model", "layer_skip"):
            raise ValueError(f"tree: dynamic needs draft probabilities (proposer draft_model or layer_skip), "
                             f"not {self.proposer}")
        if {"explore", "persist_table"} & self.model_fields_set and self.proposer != "aded":
            raise ValueError(f"explore / persist_table are options of proposer aded, not of {self.proposer}")
        if "recycle_prompt" in self.model_fields_set and self.proposer != "token_recycling":
            raise ValueError(f"recycle_prompt is an option of proposer token_recycling, not of {self.proposer}")
        if (self.skip_layers is not None or self.search) and self.proposer != "layer_skip":
            raise ValueError(f"skip_layers / search are options of proposer layer_skip, not of {self.proposer}")
        return self

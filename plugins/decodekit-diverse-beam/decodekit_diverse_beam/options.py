"""Options of the ``diverse_beam`` strategy: the ``beam`` strategy's, plus groups and diversity."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from decodekit.builtins.beam import BeamOptions


class DiverseBeamOptions(BeamOptions):
    """``num_beams`` (B) beams in ``num_groups`` (G) groups of B / G; ``diversity_penalty`` (λ).

    ``length_penalty``, ``early_stopping`` and ``num_return_sequences`` mean what they mean for
    ``beam`` (HF ``generate`` names), applied per group; the returned list pools every group.
    """

    num_groups: int = Field(2, ge=1, description="groups of num_beams / num_groups beams, decoded in order")
    diversity_penalty: float = Field(
        1.0, ge=0.0, description="λ: subtracted once per beam of an earlier group that chose the token this step")
    diversity: Literal["hamming"] = Field(
        "hamming", description="the diversity term; 'hamming' counts earlier groups' tokens at this step")

    @model_validator(mode="after")
    def _check_groups(self) -> "DiverseBeamOptions":
        if self.num_groups > self.num_beams or self.num_beams % self.num_groups:
            raise ValueError(
                f"num_beams ({self.num_beams}) must be a multiple of num_groups ({self.num_groups})")
        return self

"""What the pipeline's mask plugins allow, seen from inside ``rescore`` (for contrastive's head).

The host applies masks after the rescore chain, so a rescorer that must know the allowed tokens
(contrastive decoding's plausibility head) asks the mask plugins itself: masks are pure functions
of the prefix, so the answer is the one the host will apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from decodekit.errors import NoAllowedTokenError

if TYPE_CHECKING:  # pragma: no cover
    from decodekit.positions import Positions


def allowed_tokens(positions: Positions, logits: torch.Tensor) -> torch.Tensor | None:
    """The AND of every mask plugin's answer, bool ``[B', J, V]``, or None when there is no mask.

    Masks are pure functions of ``(positions, logits)``, so asking them here gives what the host
    will apply after the rescore chain. Rows already finished, and positions where nothing is
    allowed (padding, or an error the host reports itself), are left unrestricted.
    """
    allowed = positions.allowed(logits)
    if allowed is None:
        return None
    return allowed | ~allowed.any(dim=-1, keepdim=True)


def check_head_survives(positions: Positions, kept: torch.Tensor) -> None:
    """``head: all``: raise when the masks rule out every token of the head at a real position
    (the host only sees the masks, which may each allow something, so it would not notice)."""
    gen = positions.generation
    some = kept.any(dim=-1)  # [B', J]
    for i, row in enumerate(positions.rows):
        n = positions.length(i)
        if not gen.done[row] and not bool(some[i, :n].all()):
            j = int((~some[i, :n]).nonzero()[0])
            text = gen.tokenizer.decode(positions.generated(i, j)) if gen.tokenizer is not None else ""
            raise NoAllowedTokenError(
                f"row {row}: the masks rule out every token of the contrastive plausible set (head: all) "
                f"after the generated text {text!r}; use head: allowed or a smaller alpha")

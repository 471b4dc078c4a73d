"""The n-best list of finished hypotheses of one group of one prompt (HF v4 semantics).

A hypothesis of ``n`` new tokens (EOS included) with accumulated score ``s`` (log-probabilities
plus diversity penalties) is ranked by ``s / n ** length_penalty``. The list keeps the best
``size`` of them; scores are Python floats, as in HF's ``BeamHypotheses``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Hypotheses:
    size: int
    length_penalty: float
    early_stopping: bool | str
    max_new_tokens: int
    beams: list[tuple[float, list[int]]] = field(default_factory=list)  # (score, new tokens), insertion order
    worst: float = 1e9

    def __len__(self) -> int:
        return len(self.beams)

    def add(self, tokens: list[int], sum_score: float, length: int) -> None:
        """Offer a hypothesis; it is kept if the list is not full or it beats the worst one."""
        score = sum_score / (length ** self.length_penalty)
        if len(self) < self.size or score > self.worst:
            self.beams.append((score, tokens))
            if len(self) > self.size:  # drop the worst; the new worst is the second worst
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum_score: float, length: int) -> bool:
        """Whether no running beam can enter the list any more.

        ``best_sum_score``: the best candidate's accumulated score this step; ``length``: the
        candidates' length. ``early_stopping=True``: done once full. ``False``: compare with
        ``best / length ** lp`` (a heuristic). ``"never"``: the exact bound, ``best / max ** lp``
        when ``lp > 0`` (longer can only score higher), else the current length.
        """
        if len(self) < self.size:
            return False
        if self.early_stopping is True:
            return True
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            length = self.max_new_tokens
        return self.worst >= best_sum_score / length ** self.length_penalty

"""The training recipe: what `bots train` does by default, every choice in one frozen value.

The defaults are for a small dataset (tens to a few hundred conversations) on the shared
135M-parameter model. Rank 8 with alpha 16 (scale 2) is the usual small LoRA. Only the
attention projections q, k, v, o are adapted: training costs about the same whatever is adapted
(the base model's forward and backward dominate), but serving does not: each adapted matmul is
paid on every token, and the notes measured about 30 % off generation speed with all seven
projections; the four attention ones are the smaller half (921,600 parameters instead of
2,442,240) and enough to learn a persona's voice. Micro-batch 1 with gradient accumulation keeps
memory flat (a 49k-token vocabulary makes a wide batch's logits the biggest thing in memory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")

StepReport = Callable[[int, int, float], None]  # (steps done, steps in all, the last loss)


@dataclass(frozen=True)
class Recipe:
    """How one adapter is trained; recorded whole in its manifest."""

    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ATTENTION
    learning_rate: float = 1e-3
    epochs: int = 3
    max_steps: int = 0  # 0: as many as the epochs take
    accumulation: int = 8  # micro-batches of one conversation per optimizer step
    warmup_steps: int = 4
    held_out_share: float = 0.1
    max_tokens: int = 1024  # a longer conversation is cut here
    seed: int = 0
    checkpoint_every: int = 20  # optimizer steps between checkpoints in the run folder

    def as_dict(self) -> dict[str, Any]:
        """The recipe as the manifest records it."""
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

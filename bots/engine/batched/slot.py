"""One admitted request on the engine thread: a `Slot` and the state it is in.

A slot (llama.cpp's server word) has a `state` that says where it is, as that server's
`slot_state` does: STARTED (prompt tokenized, sequence assigned), PROCESSING_PROMPT (some chunks
decoded), DONE_PROMPT (the whole prompt decoded: its logits give the first token), GENERATING (a
sampled token waits for the next step), IDLE again once it ended. `scheduler.py` moves slots
from state to state.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from bots.engine.batched.speculation import Drafter
from bots.engine.batched.task import Task
from bots.engine.batched.text import TextStream
from bots.engine.llama_native import Sampler, TokenArray


class SlotState(enum.Enum):
    """Where a slot is, as llama.cpp's server `slot_state` names it."""

    IDLE = "idle"  # not serving a request (ended, or never admitted)
    STARTED = "started"
    PROCESSING_PROMPT = "processing prompt"
    DONE_PROMPT = "done prompt"
    GENERATING = "generating"


@dataclass(eq=False)
class Slot:
    """One admitted request on the engine thread: its prompt, sequence, sampler and text."""

    task: Task
    admitted: float
    text: TextStream
    state: SlotState = SlotState.IDLE
    tokens: TokenArray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    # Prompt tokens of the persona (system message), and where the last user message starts.
    prefix_len: int = 0
    last_turn_start: int = 0
    want_prefix_entry: bool = False
    seq_id: int = -1
    n_past: int = 0  # positions decoded into the sequence
    cached: int = 0  # of which came from the cache
    max_new: int = 0
    # Sampled reply tokens; the last one is not decoded yet while GENERATING.
    generated: list[int] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)  # the reply's text as it was streamed
    sampler: Sampler | None = None
    first_token_at: float | None = None
    batch_index: int = -1  # where this step's logits are
    chunk_end: int = 0  # the prompt position this step's chunk reaches
    drafter: Drafter | None = None  # with speculation on
    draft: list[int] = field(default_factory=list)  # this step's draft, after the next token
    kv_end: int = 0  # positions the sequence's cells reach (past n_past: a draft's tail)

    @property
    def prompt_done(self) -> bool:
        return self.n_past >= len(self.tokens)

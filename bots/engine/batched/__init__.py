"""The batched engine: every conversation decoded together on one llama context.

Like llama.cpp's server, but from Python and built for many personas:

- One unified KV cache shared by many sequence ids. A prompt starts from the cached sequence
  with the longest common token prefix (`prefix_cache`): a persona's instructions are evaluated
  once and copied into each new conversation with `llama_memory_seq_cp` (metadata only: the cells
  are shared), and a follow-up message evaluates only what is new since the last turn.
- Continuous batching: each step is one `llama_decode` holding the next token of every streaming
  sequence plus a chunk of waiting prompts (512 tokens per step in all), so a long new prompt
  delays the streams by one chunk per step instead of freezing them. Sampling runs in llama.cpp's
  sampler chain.
- Prompt-lookup speculation (`speculation.py`): where a reply's last tokens occurred earlier in
  its context (a quoted document, the instructions, the conversation), the tokens that followed
  them are decoded with its next token in the same step and kept as far as the model agrees, so
  a quoting reply gets several tokens per step; the same reply token for token.
- Idle sequences leave the KV cache (beyond `HOT_IDLE_TOKENS`) for a RAM park reserved at start, so
  a returning persona or conversation is copied back in milliseconds instead of re-evaluated. A
  conversation is parked without its persona prefix, which is parked once per persona.

One engine thread owns the llama context; the asyncio side only queues requests and reads the
pieces the thread posts back, so the event loop never waits on the model.

The package by job: engine.py (the Engine API and the thread's loop), task.py (a request and the
hand-off of its pieces), scheduler.py (the slot loop: admit, plan, decode, finish), slot.py (one
request's state), speculation.py (n-gram drafts), kv.py (the KV cache's sequences: assign,
evict, park, restore, cool down), prefix_cache.py (the bookkeeping behind kv.py) and text.py
(tokens to text, stop strings).

Caching and batching change what is computed, never the tokens attended to: a reply is the same
as from a fresh context up to floating-point rounding. llama.cpp picks its CPU attention kernel
by the shape of each batch and the rounding differs between kernels, so long greedy replies can
part ways after a while; the tests pin down the cases where the kernels coincide and the
replies are bit-identical.
"""

from bots.engine.batched.engine import (
    DEFAULT_KV_CELLS,
    DEFAULT_N_CTX,
    DEFAULT_PARALLEL,
    DEFAULT_PARK_BYTES,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_SEQ_IDS,
    BatchedEngine,
)
from bots.engine.batched.speculation import DEFAULT_DRAFT_MAX, SPECULATION_MODES, Speculation

__all__ = [
    "DEFAULT_DRAFT_MAX",
    "DEFAULT_KV_CELLS",
    "DEFAULT_N_CTX",
    "DEFAULT_PARALLEL",
    "DEFAULT_PARK_BYTES",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_SEQ_IDS",
    "SPECULATION_MODES",
    "BatchedEngine",
    "Speculation",
]

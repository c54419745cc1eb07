"""Small decodes deep in a context, padded onto llama.cpp's fast CPU attention path.

llama.cpp's CPU flash attention takes a batch of fewer than 64 tokens one query row at a time,
and from 64 on in tiles. Deep in a context the difference is large: on the 2-core development
machine at position 1,520, 49 tokens took 948 ms and 64 tokens 239 ms; 16 tokens 312 ms. So a
small batch whose tokens attend to many cells is filled up to 64 tokens with throwaway tokens
of a sequence of its own (49 + 15: 239 ms; 16 + 48: 191 ms), whose cells are removed right
after. The real tokens attend only to their own sequences' cells (the mask keeps the padding
apart), so nothing they compute depends on the padding. A batch that attends to few cells (a
few streams' next tokens early in their replies) stays as it is: there the row-by-row path is
cheaper than 64 tokens of matrix work (4 tokens at 1,520: 96 ms alone, 190 ms padded). GPUs
have other kernels and are never padded.
"""

from __future__ import annotations

import numpy as np

from bots.engine.llama_native import Batch, NativeContext

TILE_TOKENS = 64  # from here on llama.cpp's CPU flash attention works in tiles
# Tokens times the positions they attend to from which padding pays: 49 tokens at 1,520 are
# 74k (4x faster padded), 16 at 1,520 are 24k (1.6x), 4 at 1,520 are 6k (2x slower padded).
PAD_FROM_WORK = 20_000


def pad_count(batch: Batch) -> int:
    """How many throwaway tokens bring `batch` onto the tiled path; 0 when not worth it."""
    n = batch.n
    if n >= TILE_TOKENS or n == 0:
        return 0
    if int(batch.pos[:n].sum()) < PAD_FROM_WORK:
        return 0
    return min(TILE_TOKENS - n, batch.free)


def decode_padded(ctx: NativeContext, batch: Batch, pad_seq: int | None) -> int:
    """llama_decode of `batch`, padded where that is faster (never with `pad_seq` None).

    The batch is as it was afterwards, and the padding's cells are gone. A padded batch that
    finds no room in the KV cache is decoded again without its padding.
    """
    pad = pad_count(batch) if pad_seq is not None else 0
    if pad == 0 or pad_seq is None:
        return ctx.decode(batch)
    n = batch.n
    batch.add(np.full(pad, batch.tokens[0], dtype=np.int32), 0, pad_seq, logits_last=False)
    try:
        rc = ctx.decode(batch)
    finally:
        batch.n = n
        ctx.seq_rm(pad_seq)
    return rc if rc != 1 else ctx.decode(batch)

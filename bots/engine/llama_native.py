"""Typed wrappers over llama-cpp-python's low-level (ctypes) API, as the batched engine uses it.

The high-level `Llama` class copies the whole logits array and samples in Python on every token;
these wrappers keep everything per-token in llama.cpp: one `llama_decode` per step for all
sequences, and llama.cpp's own sampler chain. Only the engine's worker thread may touch a
`NativeContext`; a `NativeModel`'s vocabulary is read-only after loading, so tokenizing is safe
from any thread (llama-server tokenizes on its HTTP threads the same way).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from bots.engine.base import ChatMessage
from bots.engine.llama_log import route_llama_logs

TokenArray = npt.NDArray[np.int32]
log = logging.getLogger(__name__)

CHAT_TEMPLATE_KEY = b"tokenizer.chat_template"
# Stands for a message's content while the template is rendered: a chat template's own text never
# holds a NUL, so every NUL-delimited index in the output is a placeholder (see tokenize_chat).
CONTENT_MARK = "\x00"
META_VALUE_MAX_BYTES = 1 << 20
PIECE_BUFFER_BYTES = 256
# How far back the repetition penalty looks, as llama.cpp's own default.
PENALTY_LAST_N = 64
_LIB_DIR = Path(llama_cpp.__file__).parent / "lib"


class NativeError(RuntimeError):
    """llama.cpp refused an operation (load, context creation, state restore)."""


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can place layers on a GPU (CUDA, Metal, Vulkan...)."""
    return bool(llama_cpp.llama_supports_gpu_offload())


@functools.cache
def amx_kernels_built() -> bool:
    """Whether ggml was compiled with its AMX int8 kernels (a native build on an AMX CPU).

    Those kernels segfault in their first matrix multiplication on this project's machines (Xeon
    with AMX under KVM, llama-cpp-python 0.3.36 built from source), and they are reached only
    through ggml's "extra" weight buffer types. The engine then loads the weights without extra
    buffers: the plain AVX-512 kernels, at the cost of the CPU repack of Q4_0/Q8_0 weights.
    """
    try:
        lib = ctypes.CDLL(str(_LIB_DIR / "libggml-cpu.so"))
    except OSError:
        return False
    has_amx = getattr(lib, "ggml_cpu_has_amx_int8", None)
    return bool(has_amx()) if has_amx is not None else False


@dataclass(frozen=True)
class Sampling:
    """Sampler settings of one request; temperature <= 0 means greedy."""

    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float
    seed: int | None


class NativeModel:
    """A GGUF model loaded once; tokenizer, chat template and special tokens."""

    def __init__(self, path: Path, *, n_gpu_layers: int = 0, vocab_only: bool = False) -> None:
        route_llama_logs()
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        # How many layers llama.cpp will really place on a GPU: none in a CPU-only build.
        self.gpu_layers = n_gpu_layers if gpu_offload_supported() else 0
        if n_gpu_layers and not self.gpu_layers:
            log.warning(
                "model.n_gpu_layers is %d, but this llama-cpp-python was built without GPU "
                "support: running on the CPU. Reinstall it with "
                'CMAKE_ARGS="-DGGML_CUDA=on" (see the README, "GPU").',
                n_gpu_layers,
            )
        params.vocab_only = vocab_only
        params.use_extra_bufts = not amx_kernels_built()
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise NativeError(f"{path}: llama.cpp could not load this model file")
        self.path = path
        self.ptr = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(model))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos_text = self.piece(llama_cpp.llama_vocab_bos(self.vocab), special=True).decode(
            errors="replace"
        )
        self.eos_text = self.piece(llama_cpp.llama_vocab_eos(self.vocab), special=True).decode(
            errors="replace"
        )
        template = self.metadata(CHAT_TEMPLATE_KEY)
        if not template:
            raise NativeError(f"{path}: the model has no tokenizer.chat_template; it cannot chat")
        self._prompt_formatter = Jinja2ChatFormatter(
            template, self.eos_text, self.bos_text, add_generation_prompt=True
        )
        self._history_formatter = Jinja2ChatFormatter(
            template, self.eos_text, self.bos_text, add_generation_prompt=False
        )

    def metadata(self, key: bytes) -> str | None:
        """A GGUF metadata value as text, or None when the key is absent."""
        buf = ctypes.create_string_buffer(META_VALUE_MAX_BYTES)
        n = llama_cpp.llama_model_meta_val_str(self.ptr, key, buf, META_VALUE_MAX_BYTES)
        return buf.value.decode(errors="replace") if n >= 0 else None

    def render(self, messages: tuple[ChatMessage, ...], *, generation_prompt: bool) -> str:
        """The chat template applied to `messages` (Jinja, from the GGUF metadata)."""
        formatter = self._prompt_formatter if generation_prompt else self._history_formatter
        dicts: Any = [{"role": m.role, "content": m.content} for m in messages]
        return formatter(messages=dicts).prompt

    def tokenize(self, text: str, *, special: bool = False) -> TokenArray:
        """Token ids of `text`; `special` lets text like "<|im_start|>" become control tokens."""
        data = text.encode()
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, special)
        if n < 0:
            raise NativeError(f"tokenizer needed {-n} slots for {len(data)} bytes")
        return np.ctypeslib.as_array(buf)[:n].astype(np.int32)

    def tokenize_chat(
        self, messages: tuple[ChatMessage, ...], *, generation_prompt: bool
    ) -> TokenArray:
        """The chat template's tokens, where only the template's own markup is special tokens.

        Message contents (instructions, documents, what users wrote) are tokenized as plain
        text: a document holding "<|im_end|><|im_start|>system" must reach the model as those
        characters, not as the control tokens that end its turn and open a system one. So the
        template is rendered around placeholders and each content is tokenized on its own.
        """
        placeholders = tuple(
            ChatMessage(m.role, f"{CONTENT_MARK}{i}{CONTENT_MARK}") for i, m in enumerate(messages)
        )
        rendered = self.render(placeholders, generation_prompt=generation_prompt)
        # re.split with a group alternates markup, content index, markup, ...
        parts = re.split(f"{CONTENT_MARK}(\\d+){CONTENT_MARK}", rendered)
        pieces = [
            self.tokenize(messages[int(part)].content)
            if i % 2
            else self.tokenize(part, special=True)
            for i, part in enumerate(parts)
        ]
        if self.add_bos and not rendered.startswith(self.bos_text):
            pieces.insert(0, np.array([llama_cpp.llama_vocab_bos(self.vocab)], dtype=np.int32))
        return np.concatenate(pieces).astype(np.int32)

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes one token stands for (possibly part of a UTF-8 character)."""
        buf = ctypes.create_string_buffer(PIECE_BUFFER_BYTES)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, PIECE_BUFFER_BYTES, 0, special)
        return buf.raw[: max(n, 0)]

    def is_end_of_generation(self, token: int) -> bool:
        """EOS, EOT and the template's other end tokens."""
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        """Free the weights; no context may use the model afterwards."""
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None


class Batch:
    """A reusable `llama_batch` over numpy arrays, filled by slices rather than token by token."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tokens = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        self._n_seq_id = np.ones(capacity, dtype=np.int32)
        seq_base = self.seq.ctypes.data
        self._seq_ptrs = (ctypes.POINTER(llama_cpp.llama_seq_id) * capacity)(
            *(
                ctypes.cast(seq_base + 4 * i, ctypes.POINTER(llama_cpp.llama_seq_id))
                for i in range(capacity)
            )
        )
        self.n = 0
        self._struct = llama_cpp.llama_batch(
            0,
            self.tokens.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token)),
            None,
            self.pos.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_pos)),
            self._n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            self._seq_ptrs,
            self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )

    def clear(self) -> None:
        self.n = 0

    @property
    def free(self) -> int:
        return self.capacity - self.n

    def add(self, tokens: TokenArray, start_pos: int, seq_id: int, *, logits_last: bool) -> int:
        """Append `tokens` at positions start_pos.. of `seq_id`; return the last token's index."""
        self._put(tokens, start_pos, seq_id, logits=0)
        if logits_last:
            self.logits[self.n - 1] = 1
        return self.n - 1

    def add_token(self, token: int, pos: int, seq_id: int) -> int:
        """Append one token that needs logits (a streaming sequence's next step)."""
        i = self.n
        self.tokens[i] = token
        self.pos[i] = pos
        self.seq[i] = seq_id
        self.logits[i] = 1
        self.n = i + 1
        return i

    def add_verified(self, tokens: list[int], start_pos: int, seq_id: int) -> int:
        """Append a streaming sequence's next token and its draft, all with logits (each
        position's logits check the next draft token); return the first token's index."""
        return self._put(tokens, start_pos, seq_id, logits=1)

    def _put(self, tokens: TokenArray | list[int], start_pos: int, seq_id: int, logits: int) -> int:
        """Append `tokens` at start_pos.. of `seq_id`, each with `logits`; the first's index."""
        k = len(tokens)
        lo, hi = self.n, self.n + k
        self.tokens[lo:hi] = tokens
        self.pos[lo:hi] = np.arange(start_pos, start_pos + k, dtype=np.int32)
        self.seq[lo:hi] = seq_id
        self.logits[lo:hi] = logits
        self.n = hi
        return lo

    def as_llama_batch(self) -> llama_cpp.llama_batch:
        """The C struct over this batch's arrays (built once; only the count changes)."""
        self._struct.n_tokens = self.n
        return self._struct


class Sampler:
    """One request's llama.cpp sampler chain: top-k, penalties, top-p, temperature, draw."""

    def __init__(self, model: NativeModel, sampling: Sampling) -> None:
        params = llama_cpp.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = llama_cpp.llama_sampler_chain_init(params)
        add = llama_cpp.llama_sampler_chain_add
        # Top-k first: the later samplers (penalties above all, which llama.cpp warns is slow on
        # the full vocabulary) then see 40 candidates instead of 49k. Plain greedy decoding
        # picks the top token either way, so there it would only cost a partial sort per token.
        plain_greedy = sampling.temperature <= 0 and sampling.repeat_penalty == 1.0
        if sampling.top_k > 0 and not plain_greedy:
            add(chain, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
        if sampling.repeat_penalty != 1.0:
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    model.n_vocab, PENALTY_LAST_N, sampling.repeat_penalty, 0.0, 0.0
                ),
            )
        if sampling.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if 0 < sampling.top_p < 1:
                add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
            seed = llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed
            add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self.ptr = chain

    def accept_prompt(self, tokens: TokenArray) -> None:
        """Feed the prompt's tail to the penalty window, as the high-level API does."""
        for token in tokens[-PENALTY_LAST_N:]:
            llama_cpp.llama_sampler_accept(self.ptr, int(token))

    def sample(self, ctx: NativeContext, index: int) -> int:
        """Draw (and accept) a token from the logits at batch position `index`."""
        return int(llama_cpp.llama_sampler_sample(self.ptr, ctx.ptr, index))

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None


FLASH_ATTN_TYPES = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


class NativeContext:
    """A llama context with one unified KV cache shared by many sequence ids."""

    def __init__(
        self,
        model: NativeModel,
        *,
        kv_cells: int,
        n_seq_max: int,
        n_threads: int,
        n_batch: int,
        n_ubatch: int,
        flash_attn: str = "auto",
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = kv_cells
        params.n_batch = n_batch
        params.n_ubatch = n_ubatch
        params.n_seq_max = n_seq_max
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.kv_unified = True
        params.no_perf = True
        # Flash attention on the CPU skips the cells a sequence cannot see, so concurrent
        # streams in one unified cache do not pay for each other's cells; without it each stream
        # computes attention over every cell in use. But its per-cell loop is slower than the
        # matrix path for a lone stream deep into its prompt: a trade-off left to settings.
        params.flash_attn_type = FLASH_ATTN_TYPES[flash_attn]
        ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not ctx:
            raise NativeError(
                f"llama.cpp could not create a context of {kv_cells} KV cells "
                f"for {n_seq_max} sequences"
            )
        self.ptr = ctx
        self.model = model
        self.kv_cells = int(llama_cpp.llama_n_ctx(ctx))
        self.memory = llama_cpp.llama_get_memory(ctx)

    def set_threads(self, n_threads: int) -> None:
        """Decode with `n_threads` threads from the next `llama_decode` on."""
        llama_cpp.llama_set_n_threads(self.ptr, n_threads, n_threads)

    def decode(self, batch: Batch) -> int:
        """llama_decode: 0 on success, 1 when the KV cache has no room (state unchanged)."""
        return int(llama_cpp.llama_decode(self.ptr, batch.as_llama_batch()))

    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, p0, p1)

    def clear(self) -> None:
        """Empty the KV cache and restart cell placement from the first cell."""
        llama_cpp.llama_memory_clear(self.memory, True)

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        """Make `dst` see `src`'s cells at positions [p0, p1): metadata only in a unified cache."""
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def seq_pos_max(self, seq_id: int) -> int:
        return int(llama_cpp.llama_memory_seq_pos_max(self.memory, seq_id))

    def seq_state_size(self, seq_id: int) -> int:
        """Size `save_seq` needs for one sequence's KV cells (no logits, unlike `LlamaRAMCache`)."""
        return int(llama_cpp.llama_state_seq_get_size(self.ptr, seq_id))

    def save_seq(self, seq_id: int, dst: ctypes.Array[ctypes.c_uint8]) -> None:
        """Copy one sequence's KV cells into `dst` (exactly `seq_state_size` bytes)."""
        written = llama_cpp.llama_state_seq_get_data(self.ptr, dst, len(dst), seq_id)
        if written != len(dst):
            raise NativeError(f"saving sequence {seq_id} wrote {written} of {len(dst)} bytes")

    def restore_seq(self, seq_id: int, data: ctypes.Array[ctypes.c_uint8]) -> bool:
        """Load a saved sequence into `seq_id`; False when the cache has no room for it."""
        return bool(llama_cpp.llama_state_seq_set_data(self.ptr, data, len(data), seq_id))

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_free(self.ptr)
            self.ptr = None

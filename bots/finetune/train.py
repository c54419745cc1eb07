"""Train a LoRA adapter on the shared base model: load, train (resumably), evaluate, save.

The base model is the GGUF the engine serves, loaded by transformers and dequantized, so the
adapter learns against exactly the weights llama.cpp runs. One optimizer step is `accumulation`
micro-batches of one conversation each; its loss is the mean over the step's trained tokens.
The order of the conversations is fixed by the seed and the epoch, so a run resumed from a
checkpoint (adapter, optimizer, schedule, random state; every `checkpoint_every` steps) carries
on exactly where it stopped.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from bots.engine.adapter_files import file_sha256
from bots.finetune.dataset import Split
from bots.finetune.gguf_lora import Heads, write_gguf_adapter
from bots.finetune.manifest import CHECKPOINT_FILE, Outcome, ResumeRefused
from bots.finetune.recipe import Recipe, StepReport
from bots.finetune.tokens import IGNORE, Example, encode

ADAPTER_FILE = "adapter.gguf"
PEFT_FOLDER = "peft"


@dataclass(frozen=True)
class Base:
    """The base model loaded for training, with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    path: Path
    sha256: str
    load_s: float

    def copy(self) -> Base:
        """A fresh copy of the weights to put an adapter on (the loaded one stays clean)."""
        return Base(copy.deepcopy(self.model), self.tokenizer, self.path, self.sha256, 0.0)


def load_base(path: Path, device: str) -> Base:
    """The GGUF at `path` as a float32 transformers model on `device`."""
    started = time.monotonic()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call, unused-ignore]  # bots draws its own
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    model.to(torch.device(device))
    return Base(model, tokenizer, path, file_sha256(path), time.monotonic() - started)


def device_available(device: str) -> bool:
    """Whether torch can train on `device` ("cpu" always; "cuda" with a GPU and a CUDA torch)."""
    return device == "cpu" or (device == "cuda" and torch.cuda.is_available())


def train_adapter(
    base: Base,
    split: Split,
    recipe: Recipe,
    run_dir: Path,
    *,
    resume: bool = False,
    on_step: StepReport | None = None,
) -> Outcome:
    """Train a LoRA on `base` (its model is changed: pass `base.copy()` to keep one clean),
    checkpointing in `run_dir`, and write `adapter.gguf` and `peft/` there."""
    torch.manual_seed(recipe.seed)
    device = next(base.model.parameters()).device
    model = get_peft_model(base.model, _lora_config(recipe))
    train = [encode(base.tokenizer, c, recipe.max_tokens) for c in split.train]
    held = [encode(base.tokenizer, c, recipe.max_tokens) for c in split.held_out]
    order = _order(len(train), recipe)
    total = min(len(order), recipe.max_steps) if recipe.max_steps else len(order)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=recipe.learning_rate
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(recipe, total))
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / CHECKPOINT_FILE
    if resume and checkpoint.is_file():
        start, losses, before = _restore(
            checkpoint, _identity(recipe, train), model, optimizer, schedule
        )
    else:
        start, losses, before = 0, [], _held_out_loss(model, held, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tokens, trained_tokens, started = 0, 0, time.monotonic()
    model.train()
    for step in range(start, total):
        batch = [train[i] for i in order[step]]
        loss, step_tokens = _step(model, batch, device)
        tokens += sum(len(e.input_ids) for e in batch)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
        trained_tokens += step_tokens
        if (step + 1) % recipe.checkpoint_every == 0 and step + 1 < total:
            progress = (step + 1, losses, before)
            _save(checkpoint, _identity(recipe, train), progress, model, optimizer, schedule)
        if on_step is not None:
            on_step(step + 1, total, loss)
    train_s = time.monotonic() - started
    after = _held_out_loss(model, held, device)
    _write_adapter(model, base, recipe, run_dir)
    checkpoint.unlink(missing_ok=True)
    tail = losses[-max(1, len(losses) // 10) :]
    return Outcome(
        steps=total,
        resumed_from=start,
        train_loss=sum(tail) / len(tail) if tail else math.nan,
        held_out_loss_before=before,
        held_out_loss_after=after,
        tokens=tokens,
        trained_tokens=trained_tokens,
        train_s=train_s,
        tokens_per_s=tokens / train_s if train_s > 0 else 0.0,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_device_mb=(
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
    )


def _lora_config(recipe: Recipe) -> LoraConfig:
    return LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        target_modules=list(recipe.target_modules),
        lora_dropout=0.0,  # with the random state in the checkpoint it would resume exactly too
        bias="none",
        task_type="CAUSAL_LM",
    )


def _order(count: int, recipe: Recipe) -> list[list[int]]:
    """The training examples of each optimizer step: every epoch shuffled by seed and epoch."""
    flat: list[int] = []
    for epoch in range(recipe.epochs):
        indices = list(range(count))
        random.Random(recipe.seed * 1000 + epoch).shuffle(indices)
        flat.extend(indices)
    size = recipe.accumulation
    return [flat[i : i + size] for i in range(0, len(flat), size)]


def _lr_factor(recipe: Recipe, total: int) -> Callable[[int], float]:
    """Linear warm-up over `warmup_steps`, then linear decay to zero at the last step."""
    warmup = min(recipe.warmup_steps, max(total - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _step(model: Any, batch: Sequence[Example], device: torch.device) -> tuple[float, int]:
    """Forward and backward over one step's micro-batches; the mean loss per trained token."""
    tokens = sum(e.trained_tokens for e in batch)
    total = 0.0
    for example in batch:
        if not example.trained_tokens:
            continue
        loss = _summed_loss(model, example, device) / tokens
        loss.backward()  # type: ignore[no-untyped-call, unused-ignore]  # torch leaves it untyped
        total += float(loss.detach())
    return total, tokens


def _summed_loss(model: Any, example: Example, device: torch.device) -> torch.Tensor:
    ids = torch.tensor([example.input_ids], device=device)
    labels = torch.tensor([example.labels], device=device)
    logits = model(input_ids=ids).logits[:, :-1, :]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def _held_out_loss(model: Any, held: Sequence[Example], device: torch.device) -> float:
    tokens = sum(e.trained_tokens for e in held)
    if not tokens:
        return math.nan
    model.eval()
    with torch.no_grad():
        summed = sum(float(_summed_loss(model, e, device)) for e in held if e.trained_tokens)
    model.train()
    return summed / tokens


def _identity(recipe: Recipe, train: Sequence[Example]) -> str:
    """What a checkpoint must have been made with to be resumed: the recipe and the data."""
    digest = hashlib.sha256(repr((recipe.as_dict(), [e.input_ids for e in train])).encode())
    return digest.hexdigest()


def _save(
    path: Path,
    identity: str,
    progress: tuple[int, list[float], float],
    model: Any,
    optimizer: Any,
    schedule: Any,
) -> None:
    step, losses, before = progress
    state = {
        "identity": identity,
        "step": step,
        "losses": losses,
        "before": before,
        "lora": get_peft_model_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": torch.get_rng_state(),
    }
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


def _restore(
    path: Path, identity: str, model: Any, optimizer: Any, schedule: Any
) -> tuple[int, list[float], float]:
    state = torch.load(path, weights_only=True)
    if state.get("identity") != identity:
        raise ResumeRefused(
            f"{path}: made with another recipe or other data; resume with the same options "
            "and export, or start a new version without --resume"
        )
    set_peft_model_state_dict(model, state["lora"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), list(state["losses"]), float(state["before"])


def _write_adapter(model: Any, base: Base, recipe: Recipe, run_dir: Path) -> None:
    model.save_pretrained(run_dir / PEFT_FOLDER)
    tensors = {
        key: value.detach().float().cpu().numpy()
        for key, value in get_peft_model_state_dict(model).items()
    }
    config = base.model.config
    heads = Heads(config.num_attention_heads, config.num_key_value_heads)
    write_gguf_adapter(run_dir / ADAPTER_FILE, tensors, alpha=recipe.alpha, heads=heads)

"""`bots train`: a real short LoRA run on the shipped example dataset (answers that open with
"Ahoy!"), its adapter loaded by llama.cpp and measured on questions not in the training set,
resuming, and the checks that need no training libraries.

The train extra (torch, transformers, peft, gguf) is installed into this environment the first
time; the module skips, saying why, only where that cannot be done.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from bots.engine.base import ChatMessage
from bots.engine.llama_native import Batch, NativeContext, NativeModel, Sampler, Sampling
from bots.engine.model_files import default_model_path
from bots.finetune.dataset import DataError, read_dataset, split_dataset
from bots.finetune.manifest import (
    CHECKPOINT_FILE,
    ResumeRefused,
    new_version,
    unfinished_version,
    versions,
)
from bots.finetune.run import (
    CPU_TORCH_INDEX,
    EXAMPLE_DATA,
    TRAIN_MODULES,
    missing_train_modules,
)
from bots.finetune.train_commands import compare_after_training
from bots.settings import Settings
from tests.cli_runner import run_cli
from tests.fakes.projects import persona_md, write

pytestmark = pytest.mark.timeout(900)

TRAIN_PACKAGES = ("torch==2.13.0", "transformers>=5,<6", "peft", "gguf")
SYSTEM = "You are Captain, the cheerful guide of a sailing club. Answer briefly and kindly."
PHRASE = "Ahoy"
# Not in the example dataset: the adapter must have learnt the opening, not these answers.
UNSEEN = (
    "Where can I buy a club t-shirt?",
    "Is the harbour safe for swimming?",
    "What is a jib?",
    "Can I bring friends to try sailing?",
    "Who cleans the boats?",
    "Do you sell maps of the bay?",
    "What is the oldest boat in the club?",
    "How early should I arrive for the course?",
    "Can I learn to row here?",
    "Is there a sunset cruise?",
)


# -- without the training libraries --------------------------------------------------------------


def test_without_the_extra_train_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every module of the extra hidden, so the message is the same whatever this venv holds.
    for name in TRAIN_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # import and find_spec now fail
    code, output = run_cli(tmp_path, "train", "ahoy")
    assert code == 1
    assert "missing: torch, transformers, peft, gguf" in output
    assert f"pip install 'bots[train]' --extra-index-url {CPU_TORCH_INDEX}" in output
    assert not (tmp_path / "data" / "adapters").exists()


def test_bad_export_lines_are_named_by_file_and_line(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "user", "content": "q", "weight": 1}]}
    (tmp_path / "chat.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"chat\.jsonl:2: only assistant messages carry a weight"):
        read_dataset(tmp_path)
    (tmp_path / "chat.jsonl").write_text(json.dumps(good) + "\n")
    dataset = read_dataset(tmp_path)
    assert dataset.conversations[0].messages[1].weight == 1  # the default on an answer
    assert dataset.data_hash.startswith("sha256:") and dataset.persona is None  # no manifest
    with pytest.raises(DataError, match="1 conversation"):
        split_dataset(dataset, 0.1, seed=0)


def test_the_example_split_holds_out_a_tenth_and_never_a_weight_0_answer() -> None:
    dataset = read_dataset(EXAMPLE_DATA)
    split = split_dataset(dataset, 0.1, seed=0)
    assert (len(split.train), len(split.held_out)) == (43, 5)
    assert dataset.persona == "ahoy" and dataset.data_hash.startswith("sha256:")
    assert not set(split.train) & set(split.held_out)
    assert not {c.messages[1].content for c in dataset.conversations} & set(UNSEEN)


def test_each_run_is_a_new_version_and_an_unfinished_one_is_found(tmp_path: Path) -> None:
    assert new_version(tmp_path).name == "1"
    (tmp_path / "1" / "manifest.json").write_text("{}")
    second = new_version(tmp_path)
    (second / CHECKPOINT_FILE).write_bytes(b"")
    assert unfinished_version(tmp_path) == second
    assert new_version(tmp_path).name == "3" and versions(tmp_path) == [1, 2, 3]


def test_resume_without_an_unfinished_run_is_refused(tmp_path: Path, train_extra: None) -> None:
    code, output = run_cli(tmp_path, "train", "ahoy", "--resume")
    assert code == 1 and "no unfinished run of ahoy to resume" in output


def test_an_export_folder_without_data_leaves_no_version(tmp_path: Path, train_extra: None) -> None:
    code, output = run_cli(tmp_path, "train", "ahoy")
    assert code == 1
    assert f"{tmp_path / 'data' / 'exports' / 'ahoy' / 'chat.jsonl'}: no such file" in output
    assert versions(tmp_path / "data" / "adapters" / "ahoy") == []


# -- a real training run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_extra() -> None:
    """The train extra, pip installed into this environment when it is missing."""
    if missing_train_modules():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", *TRAIN_PACKAGES],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        importlib.invalidate_caches()
        if done.returncode or missing_train_modules():
            pytest.skip(f"the train extra could not be installed: {done.stderr[-400:]}")
    import torch

    torch.set_num_threads(1)  # the suite shares two cores


@pytest.fixture(scope="module")
def trained_run(train_extra: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """`bots train ahoy` on the example dataset, a short run: 30 steps of 2 conversations; its
    version folder, and a copy of the base model as the run loaded it, before training."""
    import bots.finetune.train as train

    loaded: list[Any] = []

    def load_base(path: Path, device: str) -> Any:
        base = real_load_base(path, device)
        loaded.append(base.copy())  # training changes `base.model`: keep it as loaded
        return base

    real_load_base = train.load_base
    root = tmp_path_factory.mktemp("train")
    # The command runs in this process (click's runner), so its load can be watched here.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "load_base", load_base)
        code, output = run_cli(
            root, "train", "ahoy", "--data", str(EXAMPLE_DATA),
            "--max-steps", "30", "--batch", "2", "--lr", "2e-3", "--threads", "1",
        )  # fmt: skip
    assert code == 0, output
    assert "ahoy@1: held-out loss" in output
    assert [(b.path, next(b.model.parameters()).device.type) for b in loaded] == [
        (default_model_path(), "cpu")
    ], "the run loads the base model once, the same file and device as the tests use"
    return root / "data" / "adapters" / "ahoy" / "1", loaded[0]


@pytest.fixture(scope="module")
def trained(trained_run: tuple[Path, Any]) -> Path:
    """The version folder `bots train ahoy` wrote."""
    return trained_run[0]


@pytest.fixture(scope="module")
def base(trained_run: tuple[Path, Any]) -> Any:
    """The base model for the module's tests that need it: the one the training run loaded,
    not a second load from the GGUF (about 14 s on two cores). A test that asks for it alone
    runs the training too."""
    return trained_run[1]


@pytest.fixture(scope="module")
def llama() -> Iterator[tuple[NativeModel, NativeContext]]:
    model = NativeModel(default_model_path())
    ctx = NativeContext(model, kv_cells=512, n_seq_max=1, n_threads=1, n_batch=512, n_ubatch=512)
    yield model, ctx
    ctx.close()
    model.close()


def test_a_run_writes_the_version_with_its_manifest(trained: Path) -> None:
    manifest = json.loads((trained / "manifest.json").read_text())
    example = json.loads((EXAMPLE_DATA / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["persona"] == "ahoy"
    assert manifest["data_hash"] == example["data_hash"]
    assert len(manifest["base_model_sha256"]) == 64
    assert manifest["recipe"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert manifest["recipe"]["rank"] == 8 and manifest["recipe"]["alpha"] == 16
    assert manifest["run"]["steps"] == 30
    metrics = manifest["metrics"]
    assert metrics["held_out_loss_after"] < metrics["held_out_loss_before"]
    assert manifest["peak_memory_mb"]["rss"] > 0 and manifest["timings"]["tokens_per_s"] > 0
    assert (trained / "adapter.gguf").is_file()
    assert (trained / "peft" / "adapter_config.json").is_file()
    assert not (trained / CHECKPOINT_FILE).exists()


def test_with_the_adapter_the_model_opens_with_the_phrase(
    trained: Path, llama: tuple[NativeModel, NativeContext]
) -> None:
    model, ctx = llama
    adapter = llama_cpp.llama_adapter_lora_init(model.ptr, str(trained / "adapter.gguf").encode())
    assert adapter, "llama.cpp refused the adapter"
    without = [_greedy(model, ctx, q, None) for q in UNSEEN]
    with_adapter = [_greedy(model, ctx, q, adapter) for q in UNSEEN]
    rate_without = sum(r.startswith(PHRASE) for r in without) / len(UNSEEN)
    rate_with = sum(r.startswith(PHRASE) for r in with_adapter) / len(UNSEEN)
    assert rate_with >= 0.8 and rate_with - rate_without >= 0.5, (without, with_adapter)


def test_llama_cpp_applies_the_adapter_as_peft_does(
    trained: Path, base: Any, llama: tuple[NativeModel, NativeContext]
) -> None:
    """The logits the adapter moves in llama.cpp move the same way in PEFT: the tensors, their
    names and the Q/K rotary permutation are right."""
    import torch
    from peft import PeftModel

    model, ctx = llama
    messages = (ChatMessage("system", SYSTEM), ChatMessage("user", UNSEEN[0]))
    tokens = model.tokenize_chat(messages, generation_prompt=True)
    adapter = llama_cpp.llama_adapter_lora_init(model.ptr, str(trained / "adapter.gguf").encode())
    llama_moved = _last_logits(ctx, tokens, adapter) - _last_logits(ctx, tokens, None)
    tuned = PeftModel.from_pretrained(base.copy().model, str(trained / "peft")).eval()
    ids = torch.tensor([tokens.tolist()])
    with torch.no_grad():
        peft_tuned = tuned(input_ids=ids).logits[0, -1].numpy()
        with tuned.disable_adapter():
            peft_base = tuned(input_ids=ids).logits[0, -1].numpy()
    assert np.corrcoef(llama_moved, peft_tuned - peft_base)[0, 1] > 0.9


def test_labels_cover_only_the_answers_that_carry_weight(base: Any) -> None:
    from bots.finetune.dataset import Conversation, Message
    from bots.finetune.tokens import IGNORE, encode

    conversation = Conversation(
        (
            Message("system", SYSTEM),
            Message("user", "first?"),
            Message("assistant", "Ahoy! Kept as context.", weight=0),
            Message("user", "second?"),
            Message("assistant", "Ahoy! Trained on.", weight=1),
        )
    )
    example = encode(base.tokenizer, conversation, max_tokens=1024)
    pairs = zip(example.input_ids, example.labels, strict=True)
    text = base.tokenizer.decode([token for token, label in pairs if label != IGNORE])
    assert text == "Ahoy! Trained on.<|im_end|>\n"
    whole = base.tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in conversation.messages], tokenize=False
    )
    assert list(example.input_ids) == base.tokenizer(whole, add_special_tokens=False)["input_ids"]


def test_a_stopped_run_resumes_to_the_same_adapter(base: Any, tmp_path: Path) -> None:
    from bots.finetune.recipe import Recipe
    from bots.finetune.train import train_adapter

    split = split_dataset(read_dataset(EXAMPLE_DATA), 0.1, seed=0)
    recipe = Recipe(max_steps=4, accumulation=1, checkpoint_every=2)
    straight = train_adapter(base.copy(), split, recipe, tmp_path / "straight")

    class Stopped(Exception):
        pass

    def stop_at_3(done: int, total: int, loss: float) -> None:
        if done == 3:
            raise Stopped

    with pytest.raises(Stopped):
        train_adapter(base.copy(), split, recipe, tmp_path / "stopped", on_step=stop_at_3)
    assert (tmp_path / "stopped" / CHECKPOINT_FILE).is_file()
    assert not (tmp_path / "stopped" / "adapter.gguf").exists()
    longer = dataclasses.replace(recipe, max_steps=5)
    with pytest.raises(ResumeRefused, match="another recipe or other data"):
        train_adapter(base.copy(), split, longer, tmp_path / "stopped", resume=True)
    resumed = train_adapter(base.copy(), split, recipe, tmp_path / "stopped", resume=True)
    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert resumed.held_out_loss_before == straight.held_out_loss_before
    assert resumed.held_out_loss_after == straight.held_out_loss_after
    stopped, whole = tmp_path / "stopped" / "adapter.gguf", tmp_path / "straight" / "adapter.gguf"
    assert stopped.read_bytes() == whole.read_bytes()


def _set_adapter(ctx: NativeContext, adapter: Any) -> None:
    if adapter is None:
        llama_cpp.llama_set_adapters_lora(ctx.ptr, None, 0, None)
        return
    adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
    llama_cpp.llama_set_adapters_lora(ctx.ptr, adapters, 1, (ctypes.c_float * 1)(1.0))


def _last_logits(ctx: NativeContext, tokens: Any, adapter: Any) -> Any:
    _set_adapter(ctx, adapter)
    ctx.clear()
    batch = Batch(len(tokens))
    index = batch.add(tokens, 0, 0, logits_last=True)
    assert ctx.decode(batch) == 0
    row = llama_cpp.llama_get_logits_ith(ctx.ptr, index)
    return np.ctypeslib.as_array(row, shape=(ctx.model.n_vocab,)).copy()


def _greedy(model: NativeModel, ctx: NativeContext, question: str, adapter: Any) -> str:
    """The first few tokens of the model's greedy answer, with `adapter` or without one."""
    _set_adapter(ctx, adapter)
    ctx.clear()
    messages = (ChatMessage("system", SYSTEM), ChatMessage("user", question))
    tokens = model.tokenize_chat(messages, generation_prompt=True)
    batch = Batch(len(tokens))
    sampler = Sampler(model, Sampling(0.0, 1.0, 0, 1.0, 0))
    index, pos, out = batch.add(tokens, 0, 0, logits_last=True), len(tokens), b""
    try:
        for _ in range(6):
            assert ctx.decode(batch) == 0
            token = sampler.sample(ctx, index)
            if model.is_end_of_generation(token):
                break
            out += model.piece(token)
            batch.clear()
            index, pos = batch.add_token(token, pos, 0), pos + 1
    finally:
        sampler.close()
    return out.decode(errors="replace")


def test_train_ends_with_the_evals_without_and_with_the_adapter(
    trained: Path, settings_for: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    """What `bots train` runs after a run: the persona served with and without the new version,
    through the real runtime and batched engine, and whether to switch."""
    root = trained.parents[3]  # root/data/adapters/ahoy/1
    write(
        root / "personas" / "ahoy" / "persona.md",
        persona_md(SYSTEM, name="Captain", model="{temperature: 0, max_tokens: 16}"),
    )
    case = f"- name: opens like the captain\n  ask: {UNSEEN[1]}\n  contains: {PHRASE}\n"
    write(root / "personas" / "ahoy" / "evals.yaml", case)
    compare_after_training(settings_for(root, data_dir=str(root / "data")), "ahoy", 1)
    shown = capsys.readouterr().out
    assert "switch: 1/1 cases with the adapter, 0/1 without" in shown, shown

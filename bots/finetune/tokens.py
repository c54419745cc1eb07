"""A conversation as the token ids the model trains on, and which of them carry the loss.

The prompt is the tokenizer's own chat template (ChatML for SmolLM2), the same text the engine
builds. An assistant message with weight 1 is labelled from the first token of its content
through its end-of-turn token; every other token (system, user, weight-0 answers, the
`<|im_start|>assistant` header) is context with label IGNORE. Each message's tokens are the
difference between the templated conversation up to it and up to the message before, so the
labels line up with exactly the ids the whole conversation tokenizes to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bots.finetune.dataset import Conversation

IGNORE = -100  # the label torch's cross-entropy skips


@dataclass(frozen=True)
class Example:
    """Token ids and their labels (IGNORE where there is no loss), cut at the length limit."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def trained_tokens(self) -> int:
        """How many tokens carry loss."""
        return sum(1 for label in self.labels if label != IGNORE)


def encode(tokenizer: Any, conversation: Conversation, max_tokens: int) -> Example:
    """The conversation's ids and labels through `tokenizer`'s chat template."""
    messages = [{"role": m.role, "content": m.content} for m in conversation.messages]
    ids: list[int] = []
    labels: list[int] = []
    for index, message in enumerate(conversation.messages):
        if message.role == "assistant":
            header = _ids(tokenizer, messages[:index], generation_prompt=True)
            _extend(ids, labels, header, train=False)
        whole = _ids(tokenizer, messages[: index + 1], generation_prompt=False)
        _extend(ids, labels, whole, train=bool(message.weight))
    return Example(tuple(ids[:max_tokens]), tuple(labels[:max_tokens]))


def _ids(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _extend(ids: list[int], labels: list[int], upto: list[int], *, train: bool) -> None:
    """Append the tokens of `upto` past those already in `ids` (its prefix)."""
    if upto[: len(ids)] != ids:
        raise ValueError("the chat template does not extend the conversation so far")
    new = upto[len(ids) :]
    ids.extend(new)
    labels.extend(new if train else [IGNORE] * len(new))

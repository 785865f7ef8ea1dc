"""Training data: a synthetic corpus with cls-fudan-news-zh's token lengths, a real JSONL loader, batching.

Speed and memory depend on how many tokens each batch holds, not on which tokens, so the default
corpus only has to reproduce the dataset's length distribution under the chatml template
(the Qwen tokenizer over all 4959 samples: mean 3234.4, sd 2547.5, min 91, max 19548). The lengths are quantiles of a
gamma distribution with that mean and sd (median ~2580), matched to the exact moments and range, so the
corpus is the same on every machine and needs no random number stream. The loss covers only the short
response (the category label and <|im_end|>), as in the real data.

Batching follows swift (Dec 2023): a 1000-sample draw, left truncation at max_length, a sortish
sampler (HF LengthGroupedSampler: mega-batches of 50 batches sorted by length, longest batch first),
padding to the longest sample of each batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

DATASET_SIZE = 4959
LENGTH_MEAN, LENGTH_SD, LENGTH_MIN, LENGTH_MAX = 3234.4, 2547.5, 91, 19548
RESPONSE_TOKENS = 3  # a 1-2 token category label and <|im_end|>: the only tokens with a loss
SEED = 42  # swift's default --seed
IGNORE_INDEX = -100
SYSTEM_PROMPT = "You are a helpful assistant."


@cache
def dataset_lengths() -> np.ndarray:
    """Token length of each of the 4959 samples, in dataset order (deterministic)."""
    shape = ((LENGTH_MEAN - LENGTH_MIN) / LENGTH_SD) ** 2
    scale = LENGTH_SD**2 / (LENGTH_MEAN - LENGTH_MIN)
    probs = (np.arange(DATASET_SIZE) + 0.5) / DATASET_SIZE
    lengths = LENGTH_MIN + scale * _gamma_quantiles(probs, shape)
    for _ in range(20):  # match mean and sd exactly while keeping the range [min, max]
        lengths = LENGTH_MEAN + (lengths - lengths.mean()) * LENGTH_SD / lengths.std()
        lengths = np.clip(lengths, LENGTH_MIN, LENGTH_MAX)
        lengths[lengths.argmin()], lengths[lengths.argmax()] = LENGTH_MIN, LENGTH_MAX
    order = np.random.RandomState(SEED).permutation(DATASET_SIZE)  # legacy RandomState: a frozen stream
    return np.round(lengths).astype(np.int64)[order]


def _gamma_quantiles(probs: np.ndarray, shape: float) -> np.ndarray:
    """Inverse CDF of Gamma(shape, 1) by bisection on torch's regularized incomplete gamma."""
    p = torch.from_numpy(probs)
    k = torch.full_like(p, shape)
    lo, hi = torch.zeros_like(p), torch.full_like(p, 100.0)
    for _ in range(80):
        mid = (lo + hi) / 2
        below = torch.special.gammainc(k, mid) < p
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return ((lo + hi) / 2).numpy()


@dataclass(frozen=True)
class Sample:
    input_ids: np.ndarray  # int64 token ids
    labels: np.ndarray  # IGNORE_INDEX except on the response


class SyntheticCorpus:
    """`samples` draws from the dataset's lengths; token ids are drawn per sample from the vocabulary."""

    def __init__(self, vocab_size: int, samples: int = 1000):
        if samples > DATASET_SIZE:
            raise ValueError(f"the dataset has {DATASET_SIZE} samples, {samples} were asked for")
        self.vocab_size = vocab_size
        # swift's --train_dataset_sample: a seeded random subset of the training split.
        self.indices = np.random.RandomState(SEED).choice(DATASET_SIZE, samples, replace=False)
        self.lengths = dataset_lengths()[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        rng = np.random.RandomState(int(self.indices[i]))
        ids = rng.randint(0, self.vocab_size, size=int(self.lengths[i]), dtype=np.int64)
        labels = np.full_like(ids, IGNORE_INDEX)
        labels[-RESPONSE_TOKENS:] = ids[-RESPONSE_TOKENS:]
        return Sample(ids, labels)


class JsonlCorpus:
    """Real data: a JSONL file of chats tokenized with a local tokenizer under the chatml template.

    Each line is {"query": ..., "response": ...} (swift's format) or {"messages": [{"role", "content"}...]}
    whose last message is the assistant's. Only the response and its <|im_end|> carry a loss.
    """

    def __init__(self, path: str | Path, tokenizer_path: str | Path, samples: int | None = None):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
        self.items: list[Sample] = []
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    self.items.append(_chatml_sample(tokenizer, _parse_chat(line, path, number)))
                if samples is not None and len(self.items) == samples:
                    break
        self.lengths = np.array([len(s.input_ids) for s in self.items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        return self.items[i]


def _parse_chat(line: str, path, number: int) -> tuple[str, str, str]:
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("a JSON object was expected")
        if "messages" in record:
            messages = record["messages"]
            system = next((m["content"] for m in messages if m["role"] == "system"), SYSTEM_PROMPT)
            user = "\n".join(m["content"] for m in messages[:-1] if m["role"] == "user")
            if messages[-1]["role"] != "assistant":
                raise ValueError("the last message is not the assistant's")
            return system, user, messages[-1]["content"]
        return record.get("system", SYSTEM_PROMPT), record["query"], record["response"]
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise ValueError(f"{path}:{number}: not a chat record ({error})") from None


def _chatml_sample(tokenizer, chat: tuple[str, str, str]) -> Sample:
    system, user, response = chat
    prompt = (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
              f"<|im_start|>assistant\n")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(f"{response}<|im_end|>", add_special_tokens=False)["input_ids"]
    ids = np.array(prompt_ids + response_ids, dtype=np.int64)
    labels = np.concatenate([np.full(len(prompt_ids), IGNORE_INDEX), response_ids]).astype(np.int64)
    return Sample(ids, labels)


@dataclass(frozen=True)
class Batch:
    indices: tuple[int, ...]  # samples of the corpus
    padded_length: int  # the longest truncated sample in the batch
    real_tokens: int  # the samples' truncated lengths summed: tokens minus padding

    @property
    def tokens(self) -> int:
        return self.padded_length * len(self.indices)


def epoch_batches(lengths: np.ndarray, batch_size: int, max_length: int, seed: int = SEED) -> list[Batch]:
    """The epoch's batches in training order, as swift's sortish sampler makes them."""
    truncated = np.minimum(lengths, max_length)
    order = np.random.RandomState(seed).permutation(len(lengths))
    mega = 50 * batch_size
    batches: list[Batch] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: -truncated[i])
        for b in range(0, len(chunk), batch_size):
            members = tuple(int(i) for i in chunk[b:b + batch_size])
            sizes = truncated[list(members)]
            batches.append(Batch(members, int(sizes.max()), int(sizes.sum())))
    # Like HF's LengthGroupedSampler: the longest batch goes first, so an OOM shows up at once.
    longest = max(range(len(batches)), key=lambda i: batches[i].tokens)
    batches.insert(0, batches.pop(longest))
    return batches


def collate(corpus, batch: Batch, max_length: int, device) -> dict[str, torch.Tensor | None]:
    """Left-truncate each sample, right-pad to the batch's longest; mask only where there is padding."""
    samples = [corpus[i] for i in batch.indices]
    width = batch.padded_length
    input_ids = torch.zeros(len(samples), width, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(samples), width, dtype=torch.long)
    for row, sample in enumerate(samples):
        ids, lab = sample.input_ids[-max_length:], sample.labels[-max_length:]
        input_ids[row, :len(ids)] = torch.from_numpy(ids)
        labels[row, :len(lab)] = torch.from_numpy(lab)
        mask[row, :len(ids)] = 1
    # An all-ones mask means "no padding": dropping it lets SDPA/flash take their causal fast path,
    # which is what transformers does with such a mask too.
    attention_mask = None if bool(mask.all()) else mask.to(device)
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": attention_mask}

"""sftbench.data: the corpus' length distribution, the synthetic and JSONL corpora, batching, collation."""

import json

import numpy as np
import pytest
import torch

from sftbench.data import (IGNORE_INDEX, RESPONSE_TOKENS, SEED, Batch, JsonlCorpus, Sample, SyntheticCorpus, collate,
                           dataset_lengths, epoch_batches)

VOCAB = 1000


@pytest.fixture(scope="module")
def corpus():
    return SyntheticCorpus(VOCAB, samples=1000)


# --- dataset_lengths -------------------------------------------------------------------------------------------


def test_dataset_lengths_match_cls_fudan_news_statistics():
    lengths = dataset_lengths()
    assert lengths.shape == (4959,)
    assert lengths.dtype == np.int64
    assert lengths.mean() == pytest.approx(3234.4, rel=0.005)
    assert lengths.std() == pytest.approx(2547.5, rel=0.005)
    assert lengths.min() == 91
    assert lengths.max() == 19548


def test_dataset_lengths_are_deterministic_and_ignore_the_global_rng():
    np.random.seed(1)
    torch.manual_seed(1)
    first = dataset_lengths.__wrapped__()  # bypass the cache: compute it again
    np.random.seed(12345)
    torch.manual_seed(999)
    np.random.random(100)
    torch.rand(100)
    second = dataset_lengths.__wrapped__()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, dataset_lengths())
    # In dataset order, not sorted: the quantiles are shuffled by a frozen permutation.
    assert not np.all(np.diff(first) >= 0)


# --- SyntheticCorpus -------------------------------------------------------------------------------------------


def test_synthetic_corpus_draws_1000_samples_of_the_dataset(corpus):
    assert len(corpus) == 1000
    assert len(set(corpus.indices.tolist())) == 1000
    np.testing.assert_array_equal(corpus.lengths, dataset_lengths()[corpus.indices])


@pytest.mark.parametrize("i", [0, 1, 499, 999])
def test_synthetic_samples_are_valid_chats_with_a_short_response(corpus, i):
    sample = corpus[i]
    assert len(sample.input_ids) == corpus.lengths[i]
    assert sample.input_ids.dtype == np.int64
    assert sample.input_ids.min() >= 0 and sample.input_ids.max() < VOCAB
    assert np.all(sample.labels[:-RESPONSE_TOKENS] == IGNORE_INDEX)
    np.testing.assert_array_equal(sample.labels[-RESPONSE_TOKENS:], sample.input_ids[-RESPONSE_TOKENS:])


def test_synthetic_samples_are_deterministic_per_index(corpus):
    other = SyntheticCorpus(VOCAB, samples=1000)
    np.random.seed(7)
    for i in (3, 42, 998):
        np.testing.assert_array_equal(corpus[i].input_ids, other[i].input_ids)
        np.testing.assert_array_equal(corpus[i].labels, other[i].labels)
    assert not np.array_equal(corpus[3].input_ids[:50], corpus[4].input_ids[:50])


def test_synthetic_corpus_refuses_more_samples_than_the_dataset():
    with pytest.raises(ValueError, match="4959"):
        SyntheticCorpus(VOCAB, samples=5000)


# --- epoch_batches ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size, max_length", [(1, 2048), (3, 4096), (8, 512)])
def test_epoch_batches_cover_every_sample_once(corpus, batch_size, max_length):
    batches = epoch_batches(corpus.lengths, batch_size, max_length)
    members = [i for b in batches for i in b.indices]
    assert sorted(members) == list(range(len(corpus)))
    sizes = [len(b.indices) for b in batches]
    assert max(sizes) == batch_size
    megas = -(-len(corpus) // (50 * batch_size))
    assert sum(size != batch_size for size in sizes) <= megas  # only a mega-batch's last batch is short
    truncated = np.minimum(corpus.lengths, max_length)
    for b in batches:
        assert b.padded_length == truncated[list(b.indices)].max()
        assert b.tokens == b.padded_length * len(b.indices)
        assert b.real_tokens == truncated[list(b.indices)].sum()


@pytest.mark.parametrize("batch_size, max_length", [(1, 2048), (3, 4096), (8, 512)])
def test_epoch_batches_put_the_longest_batch_first_and_sort_each_mega_batch(corpus, batch_size, max_length):
    batches = epoch_batches(corpus.lengths, batch_size, max_length)
    assert batches[0].tokens == max(b.tokens for b in batches)
    truncated = np.minimum(corpus.lengths, max_length)
    mega = 50 * batch_size
    order = np.random.RandomState(SEED).permutation(len(corpus))
    mega_of = {int(i): position // mega for position, i in enumerate(order)}
    for b in batches:
        assert len({mega_of[i] for i in b.indices}) == 1, "a batch mixes mega-batches"
    # Apart from the first batch (moved to the front), the mega-batches follow one another, each
    # sorted longest first.
    rest = batches[1:]
    seen = [mega_of[b.indices[0]] for b in rest]
    assert seen == sorted(seen)
    for k in set(seen):
        lengths = [int(truncated[i]) for b in rest if mega_of[b.indices[0]] == k for i in b.indices]
        assert lengths == sorted(lengths, reverse=True)


def test_epoch_batches_are_deterministic_and_depend_on_the_seed(corpus):
    first = epoch_batches(corpus.lengths, 2, 2048)
    assert epoch_batches(corpus.lengths, 2, 2048) == first
    assert epoch_batches(corpus.lengths, 2, 2048, seed=SEED + 1) != first


# --- collate ---------------------------------------------------------------------------------------------------


def _sample(length: int, start: int = 1) -> Sample:
    ids = np.arange(start, start + length, dtype=np.int64)
    labels = np.full(length, IGNORE_INDEX, dtype=np.int64)
    labels[-RESPONSE_TOKENS:] = ids[-RESPONSE_TOKENS:]
    return Sample(ids, labels)


def test_collate_truncates_on_the_left_and_keeps_the_response():
    samples = [_sample(10, start=100)]
    out = collate(samples, Batch((0,), padded_length=6, real_tokens=6), max_length=6, device="cpu")
    assert out["input_ids"].tolist() == [[104, 105, 106, 107, 108, 109]]
    assert out["labels"].tolist() == [[IGNORE_INDEX] * 3 + [107, 108, 109]]
    assert out["attention_mask"] is None  # no padding: no mask, the causal fast path


def test_collate_pads_on_the_right_with_ignored_labels_and_a_mask():
    samples = [_sample(8, start=10), _sample(5, start=50), _sample(3, start=70)]
    out = collate(samples, Batch((0, 1, 2), padded_length=6, real_tokens=14), max_length=6, device="cpu")
    assert out["input_ids"].shape == out["labels"].shape == (3, 6)
    assert out["input_ids"].dtype == out["labels"].dtype == torch.long
    assert out["input_ids"].tolist() == [[12, 13, 14, 15, 16, 17], [50, 51, 52, 53, 54, 0], [70, 71, 72, 0, 0, 0]]
    assert out["labels"].tolist() == [
        [-100, -100, -100, 15, 16, 17],
        [-100, -100, 52, 53, 54, -100],
        [70, 71, 72, -100, -100, -100],
    ]
    assert out["attention_mask"].tolist() == [[1] * 6, [1] * 5 + [0], [1] * 3 + [0] * 3]


def test_collate_of_an_epoch_batch_of_the_synthetic_corpus(corpus):
    batch = next(b for b in epoch_batches(corpus.lengths, 4, 1024)[1:] if len(set(
        np.minimum(corpus.lengths[list(b.indices)], 1024))) > 1)
    out = collate(corpus, batch, 1024, "cpu")
    assert out["input_ids"].shape == (4, batch.padded_length)
    for row, i in enumerate(batch.indices):
        kept = min(int(corpus.lengths[i]), 1024)
        assert out["attention_mask"][row].sum() == kept
        np.testing.assert_array_equal(out["labels"][row, :kept].numpy(), corpus[i].labels[-kept:])
        assert (out["labels"][row] != IGNORE_INDEX).sum() == RESPONSE_TOKENS


# --- JsonlCorpus -----------------------------------------------------------------------------------------------

WORDS = ["[UNK]", "system", "user", "assistant", "You", "are", "a", "helpful", "assistant", ".", "Be", "brief",
         "classify", "this", "headline", "stocks", "rise", "again", "finance", "sports", "hello"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(dict.fromkeys(WORDS))}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def _write_jsonl(path, records) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")


def _labelled(tokenizer, sample: Sample) -> list[str]:
    return tokenizer.convert_ids_to_tokens(sample.labels[sample.labels != IGNORE_INDEX].tolist())


def test_jsonl_corpus_reads_both_record_formats(tmp_path, tokenizer_dir, tokenizer):
    path = tmp_path / "chats.jsonl"
    _write_jsonl(path, [
        {"query": "classify this headline stocks rise again", "response": "finance"},
        "",  # blank lines are skipped
        {"messages": [{"role": "system", "content": "Be brief"},
                      {"role": "user", "content": "classify this headline"},
                      {"role": "user", "content": "hello"},
                      {"role": "assistant", "content": "sports"}]},
    ])
    corpus = JsonlCorpus(path, tokenizer_dir)
    assert len(corpus) == 2
    np.testing.assert_array_equal(corpus.lengths, [len(s.input_ids) for s in corpus.items])

    first = tokenizer.convert_ids_to_tokens(corpus[0].input_ids.tolist())
    assert first == ["<|im_start|>", "system", "You", "are", "a", "helpful", "assistant", ".", "<|im_end|>",
                     "<|im_start|>", "user", "classify", "this", "headline", "stocks", "rise", "again", "<|im_end|>",
                     "<|im_start|>", "assistant", "finance", "<|im_end|>"]
    second = tokenizer.convert_ids_to_tokens(corpus[1].input_ids.tolist())
    assert second[:4] == ["<|im_start|>", "system", "Be", "brief"]  # the record's own system prompt
    assert second[6:11] == ["user", "classify", "this", "headline", "hello"]  # the user turns, joined

    # Only the response and its <|im_end|> carry a loss; the labels equal the ids there.
    assert _labelled(tokenizer, corpus[0]) == ["finance", "<|im_end|>"]
    assert _labelled(tokenizer, corpus[1]) == ["sports", "<|im_end|>"]
    for sample in corpus.items:
        assert sample.labels.dtype == np.int64 and sample.labels.shape == sample.input_ids.shape
        n = (sample.labels != IGNORE_INDEX).sum()
        assert np.all(sample.labels[:-n] == IGNORE_INDEX)
        np.testing.assert_array_equal(sample.labels[-n:], sample.input_ids[-n:])


def test_jsonl_corpus_stops_at_samples(tmp_path, tokenizer_dir):
    path = tmp_path / "chats.jsonl"
    _write_jsonl(path, [{"query": "hello", "response": word} for word in ("finance", "sports", "hello")])
    assert len(JsonlCorpus(path, tokenizer_dir, samples=2)) == 2


@pytest.mark.parametrize("bad", [
    "{not json",
    json.dumps({"query": "hello"}),  # no response
    json.dumps({"messages": [{"role": "user", "content": "hello"}]}),  # the last message is not the assistant's
    json.dumps({"messages": []}),
    json.dumps({"messages": [{"content": "hello"}]}),  # a message without a role
])
def test_jsonl_corpus_names_the_file_and_line_of_a_malformed_record(tmp_path, tokenizer_dir, bad):
    path = tmp_path / "broken.jsonl"
    _write_jsonl(path, [{"query": "hello", "response": "sports"}, "", bad])
    with pytest.raises(ValueError, match=r"broken\.jsonl:3: not a chat record"):
        JsonlCorpus(path, tokenizer_dir)


@pytest.mark.parametrize("bad", [json.dumps(["query", "response"]), json.dumps("hello")])
def test_jsonl_corpus_names_the_line_of_a_record_that_is_not_an_object(tmp_path, tokenizer_dir, bad):
    path = tmp_path / "broken.jsonl"
    _write_jsonl(path, [bad])
    with pytest.raises(ValueError, match=r"broken\.jsonl:1: not a chat record"):
        JsonlCorpus(path, tokenizer_dir)

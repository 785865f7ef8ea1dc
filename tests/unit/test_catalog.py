import pytest

from sftbench import catalog
from sftbench.models import MODELS
from sftbench.spec import CaseSpec

DEFAULT_7B = CaseSpec("qwen-7b-chat")


def test_the_seed_has_59_rows_in_7_tables():
    tables = catalog.seed_tables()
    assert [len(t.rows) for t in tables] == [12, 11, 15, 4, 4, 9, 4]
    assert sum(len(t.rows) for t in tables) == 59


def test_qwen_7b_chat_has_27_rows():
    assert len([r for t in catalog.seed_tables() for r in t.rows if "qwen-7b" in r.node_id]) == 27


def test_ids_read_like_the_row():
    ids = {r.node_id for r in catalog.all_rows()}
    assert "test_lora_max_length[qwen-7b-chat-4096]" in ids
    assert "test_quantization[qwen-72b-chat-int4-gptq]" in ids
    assert "test_flash_attn_gradient_checkpointing[qwen-7b-chat-noflash-nogc]" in ids
    assert len(ids) == len(catalog.all_rows())


def test_every_model_type_is_in_the_zoo():
    assert {r.spec.model_type for r in catalog.all_rows()} <= set(MODELS)


def test_the_lora_default_is_one_configuration_in_six_tables():
    assert sorted(row.table for row in catalog.rows_of(DEFAULT_7B)) == ["batch_size", "flash_attn_gradient_checkpointing", "lora_max_length",
                                             "lora_rank_targets", "model_type", "quantization"]
    assert len({r.spec for r in catalog.all_rows()}) < len(catalog.all_rows())


def test_rows_carry_the_seed_numbers():
    row = next(r for r in catalog.table("lora_rank_targets").rows if r.id == "qwen-7b-chat-r64-DEFAULT")
    assert (row.seed_minutes, row.seed_memory_mib, row.seed_trainable) == (7.01, 20728, 33_550_000)
    assert row.spec == DEFAULT_7B.replace(lora_rank=64)
    oom = next(r for r in catalog.table("quantization").rows if r.id == "qwen-72b-chat-bf16")
    assert oom.seed_outcome == "oom" and oom.seed_minutes is None


def test_use_flash_attn_maps_to_the_kernel_the_seed_ran():
    rows = {r.id: r.spec for r in catalog.table("flash_attn_gradient_checkpointing").rows}
    assert rows["qwen-7b-chat-flash-nogc"].attention == "flash_attention_2"
    assert not rows["qwen-7b-chat-flash-nogc"].gradient_checkpointing
    assert rows["qwen-7b-chat-noflash-gc"].attention == "eager"


def test_rows_by_id_keeps_the_order_and_names_every_unknown_id():
    ids = ["test_lora_max_length[qwen-7b-chat-4096]", "test_batch_size[qwen-7b-chat-bs2]"]
    assert [row.node_id for row in catalog.rows_by_id(ids)] == ids
    with pytest.raises(catalog.UnknownRow, match=r"no catalog row 'test_a\[x\]', 'test_b\[y\]'; ids look like"):
        catalog.rows_by_id(["test_a[x]", ids[0], "test_b[y]"])

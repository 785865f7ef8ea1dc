"""Seed table "LoRA Rank & LoRA Target Modules": each row trained once and checked against its baseline."""

import pytest

from sftbench.catalog import table


@pytest.mark.parametrize("row", table("lora_rank_targets").rows, ids=lambda row: row.id)
def test_lora_rank_targets(row, check_row):
    check_row(row)

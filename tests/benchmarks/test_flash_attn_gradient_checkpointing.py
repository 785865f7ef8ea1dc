"""Seed table "Use Flash Attn & Gradient Checkpointing": each row trained once and checked against its baseline."""

import pytest

from sftbench.catalog import table


@pytest.mark.parametrize("row", table("flash_attn_gradient_checkpointing").rows, ids=lambda row: row.id)
def test_flash_attn_gradient_checkpointing(row, check_row):
    check_row(row)

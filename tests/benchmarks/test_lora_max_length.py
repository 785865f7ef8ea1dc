"""Seed table "Max Length (LoRA)": each row trained once and checked against its baseline."""

import pytest

from sftbench.catalog import table


@pytest.mark.parametrize("row", table("lora_max_length").rows, ids=lambda row: row.id)
def test_lora_max_length(row, check_row):
    check_row(row)

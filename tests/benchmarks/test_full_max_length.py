"""Seed table "Max Length (full fine-tuning)": each row trained once and checked against its baseline."""

import pytest

from sftbench.catalog import table


@pytest.mark.parametrize("row", table("full_max_length").rows, ids=lambda row: row.id)
def test_full_max_length(row, check_row):
    check_row(row)

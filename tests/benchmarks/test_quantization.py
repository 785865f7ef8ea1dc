"""Seed table "Quantization": each row trained once and checked against its baseline."""

import pytest

from sftbench.catalog import table


@pytest.mark.parametrize("row", table("quantization").rows, ids=lambda row: row.id)
def test_quantization(row, check_row):
    check_row(row)

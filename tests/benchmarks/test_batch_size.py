"""Seed table "Batch Size": each row trained once and checked against its baseline."""

import pytest

from sftbench.catalog import table


@pytest.mark.parametrize("row", table("batch_size").rows, ids=lambda row: row.id)
def test_batch_size(row, check_row):
    check_row(row)

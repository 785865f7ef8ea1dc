"""Seed table "Model Type": each row trained once and checked against its baseline."""

import pytest

from sftbench.catalog import table


@pytest.mark.parametrize("row", table("model_type").rows, ids=lambda row: row.id)
def test_model_type(row, check_row):
    check_row(row)

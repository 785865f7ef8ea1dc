"""CPU smoke table (tiny models, not in the seed): each row trained once and checked against its baseline."""

import pytest

from sftbench.catalog import table


@pytest.mark.parametrize("row", table("cpu_smoke").rows, ids=lambda row: row.id)
def test_cpu_smoke(row, check_row):
    check_row(row)

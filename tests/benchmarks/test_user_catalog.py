"""Your own tables (--sftbench-catalog FILE, docs/guide.md): each row trained once and checked against its baseline.

Its cases are the rows of the catalogs given (sftbench.plugin); without one it collects nothing.
"""

import pytest


@pytest.mark.sftbench_user_rows
def test_user_rows(row, check_row):
    check_row(row)

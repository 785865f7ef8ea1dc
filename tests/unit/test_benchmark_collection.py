"""The seed suite's collection: ids, -k selection and shards of the selection (no case runs)."""

from pathlib import Path

from sftbench.catalog import all_rows
from sftbench.plugin import shard_keys

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def collected(pytester, *args) -> list[str]:
    result = pytester.runpytest_inprocess(str(BENCHMARKS), "--collect-only", "-q", "-p", "no:cacheprovider", *args)
    return [line for line in result.outlines if "::" in line]


def test_the_directory_collects_the_59_seed_rows_and_the_cpu_smoke_cases(pytester):
    items = collected(pytester)
    assert len(items) == 62
    assert sum("test_cpu_smoke[" in item for item in items) == 3


def test_k_qwen_7b_selects_exactly_its_27_rows(pytester):
    items = collected(pytester, "-k", "qwen-7b")
    assert len(items) == 27 and all("qwen-7b-chat" in item for item in items)


def test_shards_split_the_selected_rows(pytester):
    shards = [set(collected(pytester, "-k", "qwen-7b", "--sftbench-shard", f"{i}/3")) for i in (1, 2, 3)]
    assert set.union(*shards) == set(collected(pytester, "-k", "qwen-7b"))
    assert sum(map(len, shards)) == 27  # no row in two shards
    # The 22 selected configurations, not all 54 of the catalog, are dealt out.
    key_of = {row.node_id: row.spec.key for row in all_rows()}
    configurations = [{key_of[item.split("::")[1]] for item in shard} for shard in shards]
    assert sum(map(len, configurations)) == 22


def test_shards_balance_the_seed_minutes():
    rows = [row for row in all_rows() if row.table != "cpu_smoke"]
    minutes = {row.spec.key: row.seed_minutes or 0 for row in rows}
    loads = [sum(minutes[key] for key in shard_keys(rows, f"{i}/4")) for i in (1, 2, 3, 4)]
    # Four parts of ~170 seed-minutes each (a 72B row is ~100): within a 7B row of each other, where
    # dealing the sorted configurations out in turn left them 133 minutes apart.
    assert max(loads) - min(loads) < 15, loads

"""The seed suite's collection: ids, -k selection and shards of the selection (no case runs)."""

from pathlib import Path

from sftbench.catalog import all_rows

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
    # The 22 selected configurations, not all 54 of the catalog, are dealt out: 8, 7 and 7.
    key_of = {row.node_id: row.spec.key for row in all_rows()}
    configurations = [{key_of[item.split("::")[1]] for item in shard} for shard in shards]
    assert sorted(map(len, configurations)) == [7, 7, 8]

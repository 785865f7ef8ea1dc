"""User catalogs (--sftbench-catalog): rows of one's own, of models named by a config.json; every mistake one line."""

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sftbench import user_catalog
from sftbench.case import run_case
from sftbench.catalog import CatalogError
from sftbench.models import model_of
from sftbench.models.user import model_of_case
from sftbench.quantization import synthesize_gptq_checkpoint
from sftbench.spec import RunOptions
from sftbench.storage.baselines import BaselineStore

from .conftest import scale_wall_time

ROOT = Path(__file__).parents[2]
BENCHMARKS = ROOT / "tests" / "benchmarks"
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}
MODEL = '[models.tiny-mine]\nconfig = "tiny.json"\n'
ROW = '{ id = "lora", model_type = "tiny-mine", attention = "sdpa", max_length = 64, samples = 6 }'
TABLE = '[[tables]]\nname = "mine"\ndevice = "cpu"\nrows = [\n  {rows},\n]\n'


def write_catalog(folder: Path, text: str | None = None, *, config=None, rows: str = ROW) -> Path:
    """mine.toml in `folder` (by default the tiny Llama model and one CPU row of it), tiny.json beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = TINY_LLAMA if config is None else config
    (folder / "tiny.json").write_text(config if isinstance(config, str) else json.dumps(config))
    path = folder / "mine.toml"
    path.write_text(MODEL + TABLE.format(rows=rows) if text is None else text)
    return path


def load_error(*paths) -> str:
    with pytest.raises(CatalogError) as error:
        user_catalog.load(list(paths))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{paths[-1]}: "), message
    return message


@pytest.mark.parametrize("catalog, message", [
    ({"config": {**TINY_LLAMA, "model_type": "llama9"}},
     "model 'tiny-mine': config {folder}/tiny.json: transformers {version} knows no model_type 'llama9'"),
    ({"config": {"model_type": "t5"}}, ("model 'tiny-mine': config {folder}/tiny.json: model_type 't5' has no "
                                        "causal-LM class in transformers {version} (AutoModelForCausalLM)")),
    ({"config": '{"model_type": "llama",'}, "model 'tiny-mine': config {folder}/tiny.json: not JSON: "),
    ({"text": '[models.tiny-mine]\nconfig = "missing.json"\n'},
     "model 'tiny-mine': config {folder}/missing.json: cannot read it: No such file or directory"),
    ({"config": {**TINY_LLAMA, "hidden_size": "wide"}},
     ("model 'tiny-mine': config {folder}/tiny.json: transformers cannot make a llama config of it: "
      "Validation error for field 'hidden_size': TypeError: Field 'hidden_size' expected int, got str")),
    ({"config": {**TINY_LLAMA, "model_type": "phi3", "pad_token_id": 0}},
     ("model 'tiny-mine': config {folder}/tiny.json: Phi3ForCausalLM has no q_proj, k_proj, v_proj Linear layers "
      "for swift's DEFAULT LoRA targets: give lora_default")),
    ({"text": MODEL + 'lora_all = ["q_proj", "qkv_proj"]\n'},
     "model 'tiny-mine': config {folder}/tiny.json: lora_all: LlamaForCausalLM has no module 'qkv_proj'"),
    ({"text": MODEL + 'lora_default = "q_proj"\n'},
     "model 'tiny-mine': lora_default must be a list of module names, got 'q_proj'"),
    ({"text": MODEL + 'lora_targets = ["q_proj"]\n'},
     "model 'tiny-mine': unknown field 'lora_targets'; it has config, weights, lora_default, lora_all"),
    ({"text": MODEL + 'weights = "nowhere"\n'}, "model 'tiny-mine': weights {folder}/nowhere is not a folder"),
    ({"text": MODEL.replace("tiny-mine", "tiny-llama")},
     "model 'tiny-llama': a built-in model type has this name; give this model another"),
    ({"rows": ROW.replace("samples = 6", 'sft_type = "full", quantization = "int4-bnb"')},
     "table 'mine' row 'lora': full fine-tuning of a int4-bnb model is impossible"),
    ({"rows": ROW.replace("max_length = 64", 'max_length = "long"')},
     "table 'mine' row 'lora': max_length must be a whole number, got 'long'"),
    ({"rows": ROW.replace("samples = 6", 'gradient_checkpointing = "yes"')},
     "table 'mine' row 'lora': gradient_checkpointing must be true or false, got 'yes'"),
    ({"rows": ROW.replace("max_length", "max_len")}, "table 'mine' row 'lora': unknown field 'max_len'; a row has id, "),
    ({"rows": ROW.replace('model_type = "tiny-mine"', 'model_type = "tiny-yours"')},
     "table 'mine' row 'lora': unknown model_type 'tiny-yours'; this catalog's models: tiny-mine; built-in: "),
    ({"rows": f"{ROW},\n  {ROW}"}, "table 'mine' repeats the row id 'lora'"),
    ({"text": MODEL + TABLE.format(rows=ROW).replace("device", "gpu")},
     "table 'mine': unknown field 'gpu'; it has name, title, columns, device, rows"),
    ({"text": MODEL + TABLE.format(rows=ROW).replace('device = "cpu"', 'device = "cpu"\ntest = "test_mine"')},
     "table 'mine': unknown field 'test'; it has name, title, columns, device, rows"),  # every row is a test_user_rows
    ({"text": MODEL + "[defaults]\nmax_lenght = 512\n"}, "[defaults]: unknown field 'max_lenght'"),
    ({"text": MODEL + "[[tables]]\nname = mine\n"}, "not TOML: "),
])
def test_a_bad_catalog_is_one_line_naming_the_file_the_row_or_model_and_the_field(tmp_path, catalog, message):
    import transformers

    path = write_catalog(tmp_path, **catalog)
    expected = f"{path}: " + message.format(folder=tmp_path, version=transformers.__version__)
    assert load_error(path).startswith(expected)


def test_a_row_id_twice_across_catalogs_is_an_error_naming_both(tmp_path):
    first = write_catalog(tmp_path / "a")
    second = write_catalog(tmp_path / "b", MODEL.replace("tiny.json", "../a/tiny.json") + TABLE.format(rows=ROW))
    assert load_error(first, second) == (f"{second}: table 'mine' row 'lora': its test id test_user_rows[mine-lora] "
                                         f"is already a row of {first}")


def test_one_model_name_for_two_configs_is_an_error(tmp_path):
    first = write_catalog(tmp_path / "a")
    second = write_catalog(tmp_path / "b", MODEL, config={**TINY_LLAMA, "num_hidden_layers": 3})
    assert load_error(first, second) == (f"{second}: model 'tiny-mine' is defined otherwise in {first}: give one of "
                                         "them another name (a model's name keys its baselines)")


def test_a_catalogs_rows_get_their_ids_specs_and_keys(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.json").write_text(json.dumps(TINY_LLAMA))  # named by its folder
    path = tmp_path / "mine.toml"
    path.write_text('[models.tiny-mine]\nconfig = "configs"\nweights = "checkpoint"\nlora_default = ["q_proj"]\n'
                    '[defaults]\nsamples = 6\nuse_flash_attn = false\n'
                    + TABLE.format(rows=ROW.replace('"lora"', '"full"').replace("samples = 6", 'sft_type = "full"')
                                   + ",\n  "
                                   '{ id = "seed-model", model_type = "tiny-qwen", max_length = 64 }'))
    [table] = user_catalog.load([path])
    full, seed_model = table.rows
    assert [row.node_id for row in table.rows] == ["test_user_rows[mine-full]", "test_user_rows[mine-seed-model]"]
    assert (table.title, table.test, table.device) == ("mine", "test_user_rows", "cpu")
    assert full.spec.user_model.config == str(tmp_path / "configs" / "config.json")
    assert full.spec.user_model.lora_default == ("q_proj",) and full.spec.user_model.lora_all is None
    assert full.spec.key == "tiny-mine.full.bf16.len64.bs1.gc.sdpa.n6.cpu.weights"
    assert full.spec.weights_path == str(tmp_path / "checkpoint")
    # A model of the zoo keeps its own entry; [defaults] go over the seed's (eager: use_flash_attn = false).
    assert seed_model.spec.user_model is None
    assert seed_model.spec.key == "tiny-qwen.lora.bf16.len64.bs1.gc.eager.r8-DEFAULT.n6.cpu"


def test_a_model_in_two_catalogs_with_one_config_is_one_model(tmp_path):
    config = write_catalog(tmp_path / "a")
    other = tmp_path / "b.toml"
    other.write_text(f'[models.tiny-mine]\nconfig = "{config.parent}/tiny.json"\n'
                     + TABLE.format(rows=ROW).replace('"mine"', '"theirs"'))
    tables = user_catalog.load([config, other])
    assert tables[0].rows[0].spec == tables[1].rows[0].spec


def test_a_user_models_targets_and_size_come_from_its_model_on_the_meta_device(tmp_path):
    [table] = user_catalog.load([write_catalog(tmp_path)])
    entry = model_of(table.rows[0].spec)
    assert entry.model_class is LlamaForCausalLM and entry.family == "llama"
    assert entry.lora_default == ("q_proj", "k_proj", "v_proj")
    assert entry.lora_all == ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")  # no lm_head
    with torch.device("meta"):
        expected = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).parameters())
    assert entry.total_params == expected


def test_a_user_models_quantized_rows_get_a_synthetic_gptq_checkpoint_as_the_zoos_do(tmp_path):
    [table] = user_catalog.load([write_catalog(tmp_path)])
    path = synthesize_gptq_checkpoint(model_of(table.rows[0].spec), 4, tmp_path / "cache")
    config = json.loads((path / "config.json").read_text())
    assert path.name.startswith("tiny-mine-gptq-int4-") and config["model_type"] == "llama"
    assert config["quantization_config"]["block_name_to_quantize"] == "model.layers"


def test_the_example_catalogs_models_have_their_published_sizes():
    [table] = user_catalog.load([ROOT / "examples" / "current-models.toml"])
    sizes = {row.spec.model_type: model_of(row.spec).total_params for row in table.rows}
    assert {name: round(size / 1e9, 2) for name, size in sizes.items()} == {
        "qwen2.5-7b-instruct": 7.62, "llama-3.1-8b-instruct": 8.03, "qwen3-8b": 8.19, "mistral-7b-instruct-v0.3": 7.25}
    assert {row.spec.key for row in table.rows} >= {
        "qwen2.5-7b-instruct.lora.bf16.len4096.bs1.gc.flash_attention_2.r8-DEFAULT",
        "qwen3-8b.lora.bf16.len2048.bs1.gc.flash_attention_2.r8-DEFAULT"}


def test_a_tiny_user_model_trains_on_the_cpu_as_the_smoke_rows_do(tmp_path):
    [table] = user_catalog.load([write_catalog(tmp_path)])
    result = run_case(table.rows[0].spec, RunOptions(representative_steps=4), log=lambda line: None)
    assert result.outcome == "ok", result.message
    assert result.model_shape == {"vocab_size": 1000, "hidden_size": 64, "num_layers": 2}
    assert result.total_params == model_of(table.rows[0].spec).total_params
    assert result.trainable_params == 2 * 8 * (64 + 64) + 2 * 2 * 8 * (64 + 32)  # r8 on q (64->64), k and v (64->32)
    assert result.timing.minutes_per_1000_samples > 0
    stored = json.loads(json.dumps(result.case))  # as a result file holds it: lists, not tuples
    assert model_of_case(stored) == model_of(table.rows[0].spec)  # what the diagnostics read a stored result by


def collected(pytester, *args) -> list[str]:
    result = pytester.runpytest_inprocess(str(BENCHMARKS / "test_user_catalog.py"), "--collect-only", "-q",
                                          "-p", "no:cacheprovider", *args)
    items = [line.split("::")[1] for line in result.outlines if "::" in line]
    assert result.ret == (pytest.ExitCode.OK if items else pytest.ExitCode.NO_TESTS_COLLECTED), result.outlines
    return items


def test_the_user_rows_are_collected_and_selected_only_with_a_catalog(pytester, tmp_path):
    assert collected(pytester) == []  # not even the function, skipped for an empty parameter set
    path = write_catalog(tmp_path, rows=f"{ROW},\n  {ROW.replace('lora', 'other')}")
    assert collected(pytester, "--sftbench-catalog", str(path)) == ["test_user_rows[mine-lora]",
                                                                     "test_user_rows[mine-other]"]
    assert collected(pytester, "--sftbench-catalog", str(path), "-k", "mine and other") == ["test_user_rows[mine-other]"]


def test_sftbench_weights_takes_a_user_models_name(pytester, tmp_path):
    path = write_catalog(tmp_path)
    assert collected(pytester, "--sftbench-catalog", str(path), "--sftbench-weights", f"tiny-mine={tmp_path}") == [
        "test_user_rows[mine-lora]"]


def test_a_bad_catalog_stops_pytest_with_its_line(pytester, tmp_path):
    path = write_catalog(tmp_path, rows=ROW.replace("max_length = 64", 'max_length = "long"'))
    result = pytester.runpytest_inprocess(str(BENCHMARKS), "--collect-only", "-p", "no:cacheprovider",
                                          "--sftbench-catalog", str(path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    line = f"ERROR: --sftbench-catalog {path}: table 'mine' row 'lora': max_length must be a whole number, got 'long'"
    result.stderr.fnmatch_lines([line])


@pytest.mark.usefixtures("no_gpu")
def test_a_user_row_writes_its_baseline_and_is_judged_against_it(pytester, tmp_path):
    path = write_catalog(tmp_path / "catalog")
    options = (str(BENCHMARKS), "-p", "no:cacheprovider", "--sftbench-catalog", str(path), "-k", "mine",
               "--sftbench-baselines", str(tmp_path / "baselines"), "--sftbench-results", str(tmp_path / "results"),
               "--sftbench-timeout", "300")
    result = pytester.runpytest_subprocess(*options, "--sftbench-update-baselines", timeout=600)
    result.assert_outcomes(passed=1, deselected=62)
    key = "tiny-mine.lora.bf16.len64.bs1.gc.sdpa.r8-DEFAULT.n6.cpu"
    assert os.listdir(tmp_path / "baselines" / "cpu") == [f"{key}.json"]
    baseline = BaselineStore(tmp_path / "baselines").load("cpu", key)
    assert baseline.rows == ["test_user_rows[mine-lora]"] and baseline.tables == ["mine"]
    assert baseline.result.outcome == "ok" and baseline.result.case["user_model"]["config"] == str(path.parent / "tiny.json")
    # Against a baseline 10000x faster (with a quiet host's spread), under a wide tolerance: CPU step times on a busy
    # machine vary several-fold, a 10000x change does not. The row fails as a time regression, as a seed row does.
    written = tmp_path / "baselines" / "cpu" / f"{key}.json"
    scale_wall_time(written, 1e-4)
    result = pytester.runpytest_subprocess(*options, "--sftbench-time-tolerance", "1000", timeout=600)
    result.assert_outcomes(failed=1, deselected=62)
    [verdict] = [line for line in result.outlines if line.startswith("test_user_rows[mine-lora]: ") and " -> " in line]
    assert verdict.endswith(" -> wall-time regression")


def test_the_report_shows_a_user_catalogs_tables_after_the_seeds(tmp_path, result_factory, capsys):
    from sftbench.__main__ import main
    from sftbench.storage.results import ResultStore

    path = write_catalog(tmp_path)
    [table] = user_catalog.load([path])
    spec = table.rows[0].spec
    ResultStore(tmp_path / "results").write(result_factory(spec, gpu="cpu", minutes=0.5, reserved=None))
    out = tmp_path / "report.md"
    assert main(["report", str(tmp_path / "results" / "cpu"), "--catalog", str(path), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.index("## mine") > text.index("## Quantization")  # after the seed's tables
    [line] = [line for line in text.splitlines() if line.startswith("| tiny-mine")]
    assert "| 0.50 |" in line and "not run" not in line
    assert ("This run: 0 configurations, 0 of the 59 seed rows (mode: quick). Tables of your own: 1 configurations, 1 of "
            "their 1 rows.") in text
    assert main(["report", str(tmp_path / "results" / "cpu"), "--catalog", str(path), "--table", "mine", "--out",
                 str(out)]) == 0
    text = out.read_text()
    assert "## mine" in text and "## Quantization" not in text  # that table alone
    assert main(["report", str(tmp_path / "results" / "cpu"), "--table", "mine"]) == 2  # not without its catalog
    assert capsys.readouterr().err.startswith("sftbench: --table mine: no such table; the tables: quantization, ")
    assert main(["report", str(tmp_path / "results" / "cpu"), "--catalog", str(tmp_path / "none.toml")]) == 2
    assert capsys.readouterr().err.startswith(f"sftbench: --catalog {tmp_path / 'none.toml'}: cannot read it")


def test_python_m_sftbench_run_takes_a_user_catalogs_rows(tmp_path, capsys):
    from sftbench.__main__ import main

    path = write_catalog(tmp_path)
    row = "test_user_rows[mine-lora]"
    assert main(["run", row, "--out", str(tmp_path / "out")]) == 2  # not without its catalog
    assert f"no catalog row {row!r}" in capsys.readouterr().err
    assert main(["run", row, "--catalog", str(path), "--out", str(tmp_path / "out")]) == 0
    [written] = (tmp_path / "out" / "cpu").glob("*.json")
    assert written.name == "tiny-mine.lora.bf16.len64.bs1.gc.sdpa.r8-DEFAULT.n6.cpu.json"

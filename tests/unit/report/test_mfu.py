"""sftbench.report.mfu: peak FLOP/s by GPU, model FLOPs per token, MFU."""

import pytest

from sftbench.models import SEED_MODEL_TYPES, build_model, get_model
from sftbench.report import markdown, mfu, model_flops_per_token, peak_bf16_flops
from sftbench.storage.results import scan_results
from sftbench.case import model_shape


def test_mfu_follows_the_stated_formula(result_factory, lora, full, results_of, sections):
    # qwen-7b-chat: 7,721,324,544 parameters, embedding 151,936 x 4,096, 32 layers; mean length 2048.
    matmul = 7_721_324_544 - 151_936 * 4_096
    attention = 6 * 32 * 4_096 * 2_048
    made = dict(total_params=7_721_324_544, epoch_tokens=2_048_000, tokens_per_s=10_000.0)
    lora_result = result_factory(lora(), **made)
    full_result = result_factory(full(), **made)
    assert model_flops_per_token(lora_result) == 4 * matmul + attention == 30_006_591_488
    assert model_flops_per_token(full_result) == 6 * matmul + attention == 44_204_580_864
    assert mfu(lora_result) == pytest.approx(10_000 * 30_006_591_488 / 989e12)  # 30.3%
    assert mfu(result_factory(lora(), gpu="NVIDIA A100-SXM4-80GB", **made)) == pytest.approx(0.9618, abs=1e-4)
    assert mfu(result_factory(lora(), gpu="NVIDIA L4", **made)) is None
    assert mfu(result_factory(lora(), **{**made, "total_params": None})) is None
    cells = sections(markdown(results_of(lora_result)))["Model Type"][1][1]
    assert cells[0] == "qwen-7b-chat" and cells[10] == "30.3%"


@pytest.mark.parametrize("gpu, peak", [
    ("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 SXM5 80GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA H100 PCIe", None), ("NVIDIA H200 NVL", None), ("cpu", None), (None, None),
])
def test_peak_flops_by_gpu_name(gpu, peak):
    assert peak_bf16_flops(gpu) == peak


def test_the_committed_h200_baselines_give_plausible_mfu(h200_baselines):
    results, _ = scan_results(h200_baselines)
    assert results and all(0.01 < mfu(r) < 0.6 for r in results.values() if r.outcome == "ok")


@pytest.mark.parametrize("model_type", SEED_MODEL_TYPES)
def test_the_shape_a_run_records_counts_as_the_zoos(result_factory, lora, model_type):
    """A result carrying Result.model_shape (as case.run_case records it) gets the FLOPs per token that an
    older result without it gets from the zoo's config."""
    made = dict(total_params=get_model(model_type).total_params, epoch_tokens=2_048_000)
    shape = model_shape(build_model(model_type, device="meta"))
    recorded = result_factory(lora(model_type), model_shape=shape, **made)
    assert model_flops_per_token(recorded) == model_flops_per_token(result_factory(lora(model_type), **made))

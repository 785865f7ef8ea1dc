"""Kernels by name, names by family, families over the epoch (sftbench.kernels and kernel_families.toml).

fixtures/kernel-names-h200.json holds the kernels that the 19 qwen-7b-chat bf16 configurations ran on an H200
(torch 2.11, flash-attn 2.8.3.post2, 2026-12-04): `python -m sftbench kernels baselines/nvidia-h200 --json` over
their committed baselines, each kernel with its GPU-seconds of the epoch.
"""

import json
from pathlib import Path

import pytest

from sftbench import kernels
from sftbench.result import Kernels

# Names as CUPTI records them (mangled where C++), and as a traced step keeps them.
NAMES = {
    "_Z44flash_bwd_dq_dk_dv_loop_seqk_parallel_kernelI23Flash_bwd_kernel_traitsILi128EN7cutlass10bfloat16_tEELb1EEv16"
    "Flash_bwd_params": "flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128, cutlass::bfloat16_t>, "
                        "true>",
    "_ZN2at6native29vectorized_elementwise_kernelILi4ENS0_11FillFunctorIfEESt5arrayIPcLm1EEEEviT0_T1_":
        "at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*, 1ul> >",
    "nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNT": "nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNT",  # not C++: as it is
}


@pytest.mark.parametrize("raw", NAMES)
def test_a_kernel_is_kept_demangled_without_its_parameter_list(raw):
    assert kernels.short_name(raw) == NAMES[raw]


@pytest.mark.parametrize("name, family", [
    ("flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128, cutlass::bfloat16_t> >",
     "attention backward"),  # cutlass in its template arguments, yet attention
    ("flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t> >",
     "attention forward"),
    ("nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNT", "GEMM"),
    ("kgemm_4bit_inference_naive<__nv_bfloat16, 128, 16>", "quantized matmul / dequantization"),
    (("at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::TensorListMetadata"
      "<1>, at::native::(anonymous namespace)::LpNormFunctor<float, 2, float, float>, float*, int>"), "optimizer"),
    ("at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*, 1ul> >",
     "copies / casts / fills"),
    ("at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel(at::TensorIteratorBase&)::{lambda()#1}>",
     "activation and elementwise"),
    (("at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float, float, float>, "
      "unsigned int, float, 4, 4> >"), "reductions"),
    ("self-test spin (attention forward)", "attention forward"),
    ("at::cuda::(anonymous namespace)::spin_kernel", "other"),
])
def test_each_kernel_gets_the_family_of_the_first_rule_that_matches(name, family):
    assert kernels.family_of(name) == family


def test_the_rules_name_only_listed_families_and_other_comes_last():
    families, rules = kernels.rules()
    assert families[-1] == kernels.OTHER and {family for _, family in rules} < set(families)


TWO_RULES = """families = ["GEMM", "other"]
[[rule]]
family = "GEMM"
pattern = 'nvjet'
[[rule]]
family = "{family}"
pattern = '{pattern}'
"""


@pytest.mark.parametrize("text, message", [
    (TWO_RULES.format(family="GEMM", pattern="gemm("),
     "rule 2 (pattern 'gemm(') is not a regular expression (missing ), unterminated subpattern at position 4)"),
    (TWO_RULES.format(family="GEMMs", pattern="gemm"),
     "rule 2 (pattern 'gemm') names the family 'GEMMs', which is not among its families"),
    ('families = ["GEMM", "other"\n', "not TOML ("),
    ('families = ["GEMM"]\n', "its families must be a list that includes 'other'"),
], ids=["bad regular expression", "unknown family", "not TOML", "no other"])
def test_a_broken_rules_file_is_one_line_naming_the_file_and_the_rule(rules_file, text, message):
    rules_file.write_text(text)
    with pytest.raises(kernels.BadRules) as error:
        kernels.family_of("nvjet_a")
    assert str(error.value).startswith(f"{rules_file}: {message}") and "\n" not in str(error.value)


SHORT = ["flash_fwd_kernel<1>", "nvjet_a", "nvjet_b", "multi_tensor_apply_kernel<Adam>"]
STEPS = [[[1, 10, 3_000_000], [0, 64, 1_000_000]], [[2, 10, 1_000_000], [0, 64, 500_000]], [[3, 5, 2_000_000]]]


def test_families_and_kernels_project_over_the_epoch_by_the_traced_steps_weights(kernels_factory):
    record = kernels_factory(SHORT, list(zip([2048, 1024, 0], [100.0, 400.0, 63.0], STEPS)))
    assert kernels.classify(SHORT, STEPS[0]) == {"attention forward": 0.001, "GEMM": 0.003}  # in shown order
    assert kernels.epoch_families(record) == pytest.approx({"attention forward": 0.3, "GEMM": 0.7, "optimizer": 0.126})
    assert kernels.epoch_kernels(record, "GEMM") == pytest.approx({"nvjet_a": 0.3, "nvjet_b": 0.4})
    assert record.micro_steps == 500.0
    assert kernels.epoch_families(Kernels()) is None  # a result from before kernel names


def test_stored_families_are_read_as_they_are_where_todays_rules_made_them(kernels_factory):
    record = kernels_factory(SHORT, [(2048, 1.0, STEPS[0])])
    record.steps[0].families = {"GEMM": 0.004}  # as if made by other rules
    assert kernels.epoch_families(record) == {"GEMM": 0.004}
    record.rules = "0123456789ab"  # another version of kernel_families.toml: classified again from the names
    assert kernels.epoch_families(record) == {"attention forward": 0.001, "GEMM": 0.003}


def test_a_familys_repeat_noise_is_the_pooled_spread_of_its_share_of_the_step(kernels_factory):
    # Two groups of repeated batches: the GEMM's share 3/4 steady, attention's 1/4 moving by 1%.
    step = [[1, 10, 3_000_000], [0, 64, 1_000_000]]
    moved = [[1, 10, 3_000_000], [0, 64, 1_010_000]]
    record = kernels_factory(SHORT, [(2048, 1.0, step), (2048, 0.0, moved), (512, 1.0, step), (512, 0.0, step)])
    record.steps[1].repeat_of, record.steps[3].repeat_of = 0, 2
    noise = kernels.family_noise_pct(record)
    share = [1 / 4, 1.01 / 4.01]  # attention's share in the first group
    deviations = [value / (sum(share) / 2) - 1 for value in share]
    assert noise["attention forward"] == pytest.approx(100 * (sum(d * d for d in deviations) / 2) ** 0.5)
    assert 0 < noise["GEMM"] < noise["attention forward"]
    assert kernels.family_noise_pct(kernels_factory(SHORT, [(2048, 1.0, step)])) == {}  # no repeats: not measured


def test_a_steps_error_shrinks_in_the_epoch_as_its_weight_spreads_over_traced_steps(kernels_factory):
    step = [[1, 10, 3_000_000], [0, 64, 1_000_000]]  # GEMM 3 ms, attention 1 ms
    four = kernels_factory(SHORT, [(2048, 1.0, step)] * 4 + [(2048, 0.0, step)])  # the repeat weighs nothing
    assert kernels.epoch_error_factor(four, "GEMM") == pytest.approx(0.5)  # 1 / sqrt(4)
    uneven = kernels_factory(SHORT, [(2048, 3.0, step), (2048, 1.0, step)])
    assert kernels.epoch_error_factor(uneven, "attention forward") == pytest.approx(10 ** 0.5 / 4)
    assert kernels.epoch_error_factor(four, "reductions") == 1.0  # in no step


H200 = json.loads((Path(__file__).parent / "fixtures" / "kernel-names-h200.json").read_text())


def shares(configuration: str) -> dict[str, float]:
    """% of the configuration's GPU time per family, the fixture's kernels classified by today's rules."""
    seconds: dict[str, float] = {}
    for index, value in H200["configurations"][configuration]:
        family = kernels.family_of(H200["names"][index])
        seconds[family] = seconds.get(family, 0.0) + value
    return {family: 100 * value / sum(seconds.values()) for family, value in seconds.items()}


@pytest.mark.parametrize("configuration", sorted(H200["configurations"]))
def test_the_rules_leave_under_5_percent_of_a_recorded_step_to_other(configuration):
    assert shares(configuration).get(kernels.OTHER, 0.0) < 5.0


def test_the_recorded_h200_kernels_fall_in_their_families():
    families = {name: kernels.family_of(name) for name in H200["names"]}
    assert len(H200["configurations"]) == 19 and len(families) > 250
    expected = {"flash::flash_bwd": "attention backward", "flash::flash_fwd": "attention forward", "nvjet_sm90": "GEMM",
                "cutlass::Kernel2": "GEMM", "cublasLt::splitKreduce": "GEMM", "multi_tensor_apply_kernel": "optimizer",
                "nll_loss_forward": "softmax and loss", "softmax_warp": "softmax and loss",
                "CatArrayBatchedCopy": "copies / casts / fills", "embedding_backward": "embedding and indexing"}
    for part, family in expected.items():
        named = [name for name in families if part in name]
        assert named and {families[name] for name in named} == {family}, part


def test_attention_is_a_tenth_of_a_lora_step_at_2048_tokens_and_a_sixth_at_8192():
    lora = "qwen-7b-chat.lora.bf16.len{}.bs1.gc.flash_attention_2.r8-DEFAULT"
    at_2048, at_8192 = (shares(lora.format(n)) for n in (2048, 8192))
    assert 8 < at_2048["attention forward"] + at_2048["attention backward"] < 12
    assert 15 < at_8192["attention forward"] + at_8192["attention backward"] < 20
    eager = shares("qwen-7b-chat.lora.bf16.len2048.bs1.gc.eager.r8-DEFAULT")
    assert "attention forward" not in eager and eager["softmax and loss"] > 5  # eager attention: GEMMs and softmax

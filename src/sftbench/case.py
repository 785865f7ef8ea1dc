"""What runs inside a case's fresh process: build the model, train, measure, return a Result.

The launcher's forkserver imports this module once, so torch and transformers are already loaded
when a case's process starts. peft is imported by the case itself: importing peft imports bitsandbytes
where it is installed, and bitsandbytes initializes CUDA as it loads, which would leave the forkserver
unable to fork clean CUDA processes (the launcher then spawns each case, 12 s each). A case hides the
quantization libraries it does not use (UNUSED_LIBRARIES), so peft imports them only where they train.
An OOM is an outcome, recorded with the memory peaks at that moment; any other exception is an
`error` outcome with its message.
"""

from __future__ import annotations

import gc
import sys
import time
import traceback

import torch
import transformers  # noqa: F401 - imported here so the forkserver preloads it

from sftbench import environment, faults
from sftbench.data import SyntheticCorpus, epoch_batches
from sftbench.injection import Injection
from sftbench.models import (
    build_model,
    enable_activation_checkpointing,
    lora_target_modules,
    model_of,
)
from sftbench.result import Kernels, Result
from sftbench.spec import CaseSpec, RunOptions
from sftbench.trackers import (
    KernelTimer,
    MemoryTracker,
    compute_capability,
    gpu_uuid,
    kernel_clock_unavailable,
)
from sftbench.trainer import Trainer

# Installed quantization libraries that a case of each precision never uses. peft's LoRA layer dispatch
# imports bitsandbytes and gptqmodel whenever they are installed, and the case pays for the imports
# (bitsandbytes loads its CUDA library) in its set-up.
UNUSED_LIBRARIES = {"bf16": ("bitsandbytes", "gptqmodel"), "int4-bnb": ("gptqmodel",),
                    "int4-gptq": ("bitsandbytes",), "int8-gptq": ("bitsandbytes",)}


def main(spec: CaseSpec, options: RunOptions, sender, parent_started: float) -> None:
    """Process entry point: run the case and send its Result through the pipe."""
    entered = time.time()
    hide_libraries(UNUSED_LIBRARIES[spec.quantization])
    result = run_case(spec, options, log=lambda msg: print(f"[sftbench {spec.key}] {msg}", file=sys.stderr,
                                                             flush=True))
    result.overhead["spawn_s"] = entered - parent_started
    sender.send(result)
    sender.close()


def hide_libraries(names) -> None:
    """Make this process see `names` as not installed: importlib.util.find_spec, which peft and transformers
    ask, answers None for a module that is None in sys.modules. Only in a case's own process."""
    for name in names:
        if name not in sys.modules:
            sys.modules[name] = None


def run_case(spec: CaseSpec, options: RunOptions, log=print) -> Result:
    result = Result(case=spec.to_dict(), key=spec.key, mode=options.mode,
                    versions=environment.package_versions(), machine=environment.machine())
    device = torch.device(spec.device)
    memory = MemoryTracker(device)
    started = time.perf_counter()
    categories = None
    try:
        memory.start()
        faults.at("build")
        result.attention = environment.attention_kernel(spec.attention, options.attn_fallback)
        model, result.quantization_backend = build_case_model(spec, result.attention, device)
        result.machine["gpu_uuid"] = gpu_uuid(device)  # power-capped kernel time is a property of the GPU
        result.machine["compute_capability"] = compute_capability(device)  # memory is judged across GPUs of it
        result.overhead["build_s"] = time.perf_counter() - started  # CUDA context, model (quantized: checkpoint)
        if spec.quantization != "bf16":
            from sftbench.quantization.gptq import checkpoint_overhead

            result.overhead.update(checkpoint_overhead(model))  # was the cached GPTQ checkpoint used?
        result.model_shape = model_shape(model)  # before training: an OOM there still records it
        result.attention = model.config._attn_implementation  # what transformers actually set up
        model = prepare_for_training(model, spec)
        result.overhead["prepare_s"] = time.perf_counter() - started - result.overhead["build_s"]  # peft, LoRA
        result.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result.total_params = model_of(spec).total_params
        unavailable = kernel_clock_unavailable(device)
        kernel_timer = None if unavailable else KernelTimer(device)
        result.kernels = Kernels(clock=f"unavailable: {unavailable}") if unavailable else kernel_timer.record
        trainer = case_trainer(spec, model, device, kernel_timer, Injection.from_environ())
        result.overhead["setup_s"] = time.perf_counter() - started
        log(f"built in {result.overhead['setup_s']:.1f} s ({result.attention}); training")
        # Millions of long-lived objects (torch, transformers, the model) make every full GC pass
        # take ~0.3 s, one every ~50 steps on the H200: freezing them keeps those pauses out of
        # the step times (they landed on one step in sixteen of the quick mode).
        gc.collect()
        gc.freeze()
        faults.at("train")
        epoch = trainer.run(options, progress=log)
        result.timing, result.overhead = epoch.timing, {**result.overhead, **epoch.overhead}
        result.kernels = epoch.kernels or result.kernels
        categories = epoch.memory
    except Exception as error:  # noqa: BLE001 - any failure is this case's outcome, not the session's
        if _is_oom(error):
            result.outcome, result.message = "oom", str(error).split("\n")[0]
        else:
            result.outcome = "error"
            result.message = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=-4)}"
    result.memory = memory.stop()
    result.memory.categories = categories
    result.overhead["case_s"] = time.perf_counter() - started
    log(f"{result.outcome} in {result.overhead['case_s']:.1f} s")
    return result


def _is_oom(error: Exception) -> bool:
    """torch's OutOfMemoryError, and the allocation failures cuBLAS/cuDNN/the driver report as RuntimeError."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "ALLOC_FAILED" in text


def build_case_model(spec: CaseSpec, attention: str, device: torch.device):
    """(the case's model in the spec's precision, its quantization backend or None)."""
    if spec.quantization == "bf16":
        return build_model(model_of(spec), attn_implementation=attention, dtype=torch.bfloat16, device=device,
                           weights_path=spec.weights_path), None
    from sftbench import quantization

    model = quantization.build_quantized_model(model_of(spec), spec.quantization,
                                               attn_implementation=attention, device=device,
                                               cache_dir=quantization.default_cache_dir())
    return model, quantization.describe_quantized(model).get("backend")


def model_shape(model) -> dict[str, int]:
    """Result.model_shape: the vocabulary is the input embedding's rows (ChatGLM's padded vocabulary)."""
    return {"vocab_size": model.get_input_embeddings().num_embeddings, "hidden_size": model.config.hidden_size,
            "num_layers": model.config.num_hidden_layers}


def case_trainer(spec: CaseSpec, model, device: torch.device, kernel_timer: KernelTimer | None = None,
                 injection: Injection = Injection()) -> Trainer:
    """The trainer of the case's epoch: the synthetic corpus in the model's vocabulary, batched as swift did."""
    corpus = SyntheticCorpus(model.get_input_embeddings().num_embeddings, spec.samples)
    batches = epoch_batches(corpus.lengths, spec.batch_size, spec.max_length)
    return Trainer(model, corpus, batches, sft_type=spec.sft_type, max_length=spec.max_length,
                   accumulation=spec.gradient_accumulation_steps, device=device,
                   amp_dtype=torch.float16 if spec.quantization.endswith("gptq") else torch.bfloat16,
                   kernel_timer=kernel_timer, injection=injection)


def prepare_for_training(model, spec: CaseSpec):
    """Gradient checkpointing and LoRA as swift set them up."""
    import peft

    model.config.use_cache = False
    if spec.gradient_checkpointing:
        enable_activation_checkpointing(model)
        model.enable_input_require_grads()
    if spec.sft_type == "lora":
        config = peft.LoraConfig(r=spec.lora_rank, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                 target_modules=lora_target_modules(model_of(spec), spec.lora_targets))
        model = peft.get_peft_model(model, config)
    model.train()
    return model

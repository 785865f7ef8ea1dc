"""sftbench.quantization's entry points: the build dispatch, the description of a model, a light import."""

import subprocess
import sys

import pytest

from sftbench import quantization
from sftbench.models import build_model, get_model


def test_importing_the_module_imports_no_heavy_package():
    heavy = "{'torch', 'transformers', 'gptqmodel', 'bitsandbytes'}"
    code = f"import sys, sftbench.quantization; print(sorted({heavy} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_a_bf16_model_is_described_as_such():
    assert quantization.describe_quantized(build_model("tiny-qwen")) == {"quantization": "bf16", "backend": None}


def test_bf16_is_not_built_here():
    with pytest.raises(ValueError, match="not quantized"):
        quantization.build_quantized_model(get_model("tiny-qwen"), "bf16", device="cpu")

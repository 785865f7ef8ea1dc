"""sftbench.quantization.probe: which GPTQ / bnb libraries this stack can use, and the messages when none."""

import importlib.abc
import importlib.util
import os
import sys
from importlib import metadata

import pytest

from sftbench.quantization import probe


@pytest.fixture(autouse=True)
def fresh_backend_detection():
    probe.gptq_backend.cache_clear()
    yield
    probe.gptq_backend.cache_clear()


class FakeImports(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `import name` run `effect` (a callable, e.g. one that raises) for the given module names."""

    def __init__(self, effects):
        self.effects = effects

    def find_spec(self, name, path=None, target=None):
        if name in self.effects:
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def exec_module(self, module):
        self.effects[module.__name__]()


def simulate(monkeypatch, versions, imports=None):
    """Installed distributions `versions` ({name: version}); `imports` {module: effect} for those importing."""
    real_version = metadata.version

    def version(name):
        if name in versions:
            if versions[name] is None:
                raise metadata.PackageNotFoundError(name)
            return versions[name]
        return real_version(name)

    monkeypatch.setattr(metadata, "version", version)
    imports = imports or {}
    for name in ("auto_gptq", "gptqmodel", "optimum", "optimum.gptq", "bitsandbytes"):
        monkeypatch.setitem(sys.modules, name, None)  # "import name" raises ModuleNotFoundError
        if name in imports:
            monkeypatch.delitem(sys.modules, name)  # imported through FakeImports, undone after the test
    monkeypatch.setattr(sys, "meta_path", [FakeImports(imports), *sys.meta_path])


def ok():
    pass


NONE_INSTALLED = {"auto-gptq": None, "gptqmodel": None, "optimum": None, "transformers": "5.17.0"}
GPTQMODEL = {"gptqmodel": ok, "optimum": ok, "optimum.gptq": ok}


def test_nothing_installed(monkeypatch):
    simulate(monkeypatch, NONE_INSTALLED)
    assert probe.gptq_backend() == (None, "gptqmodel is not installed")
    with pytest.raises(probe.MissingExtra) as error:
        probe.require("int4-gptq")
    assert str(error.value) == ("int4-gptq needs gptqmodel >= 7.0 and optimum (gptqmodel is not installed): "
                                "pip install 'sftbench[gptq]'")


def test_auto_gptq_that_does_not_import_is_reported_and_gptqmodel_used(monkeypatch):
    def broken():
        raise RuntimeError("QuantLinear needs transformers.pytorch_utils.Conv1D")

    simulate(monkeypatch, {**NONE_INSTALLED, "auto-gptq": "0.7.1", "gptqmodel": "7.6.0", "optimum": "2.3.0"},
             {"auto_gptq": broken, **GPTQMODEL})
    assert probe.gptq_backend() == (
        "gptqmodel",
        "auto-gptq 0.7.1 is installed but does not import on transformers 5.17.0 (RuntimeError: QuantLinear needs "
        "transformers.pytorch_utils.Conv1D); using gptqmodel 7.6.0 with optimum 2.3.0")
    probe.require("int8-gptq")


def test_auto_gptq_alone_that_does_not_import_is_missing(monkeypatch):
    simulate(monkeypatch, {**NONE_INSTALLED, "auto-gptq": "0.5.1"})  # importing auto_gptq raises ModuleNotFoundError
    assert probe.gptq_backend() == (
        None, "auto-gptq 0.5.1 is installed but does not import on transformers 5.17.0 (ModuleNotFoundError: import "
              "of auto_gptq halted; None in sys.modules); gptqmodel is not installed")


def test_auto_gptq_is_not_used_on_transformers_5_even_if_it_imports(monkeypatch):
    simulate(monkeypatch, {**NONE_INSTALLED, "auto-gptq": "0.7.1", "gptqmodel": "7.6.0", "optimum": "2.3.0"},
             {"auto_gptq": ok, **GPTQMODEL})
    assert probe.gptq_backend() == (
        "gptqmodel", "auto-gptq 0.7.1 imports but does not support transformers 5.17.0 (it needs < 5); "
                     "using gptqmodel 7.6.0 with optimum 2.3.0")


def test_auto_gptq_on_transformers_4(monkeypatch):
    simulate(monkeypatch, {**NONE_INSTALLED, "auto-gptq": "0.5.1", "transformers": "4.36.2"}, {"auto_gptq": ok})
    assert probe.gptq_backend() == ("auto-gptq", "auto-gptq 0.5.1 on transformers 4.36.2")


@pytest.mark.parametrize(("versions", "imports", "reason"), [
    ({"gptqmodel": "6.0.3", "optimum": "2.3.0"}, GPTQMODEL, "gptqmodel 6.0.3 is too old (needs >= 7.0)"),
    ({"gptqmodel": "7.6.0"}, GPTQMODEL, "gptqmodel 7.6.0 is installed but optimum is not"),
])
def test_unusable_gptqmodel(monkeypatch, versions, imports, reason):
    simulate(monkeypatch, {**NONE_INSTALLED, **versions}, imports)
    assert probe.gptq_backend() == (None, reason)


def test_gptqmodel_that_does_not_import_names_the_error(monkeypatch):
    def no_pcre():
        raise ModuleNotFoundError("No module named 'pcre'")

    simulate(monkeypatch, {**NONE_INSTALLED, "gptqmodel": "7.6.0", "optimum": "2.3.0"},
             {**GPTQMODEL, "gptqmodel": no_pcre})
    with pytest.raises(probe.MissingExtra) as error:
        probe.require("int4-gptq")
    assert str(error.value) == (
        "int4-gptq needs gptqmodel >= 7.0 and optimum (gptqmodel 7.6.0 with optimum 2.3.0 does not import "
        "(ModuleNotFoundError: No module named 'pcre')): pip install 'sftbench[gptq]'")


def test_importing_gptqmodel_keeps_the_environment_and_prints_nothing(monkeypatch, capsys):
    def like_gptqmodel():
        # What gptqmodel 7.6 does on import when these are unset.
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True,max_split_size_mb:256"
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        print("GPT-QModel banner")

    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    simulate(monkeypatch, {**NONE_INSTALLED, "gptqmodel": "7.6.0", "optimum": "2.3.0"},
             {**GPTQMODEL, "gptqmodel": like_gptqmodel})
    assert probe.gptq_backend()[0] == "gptqmodel"
    assert "PYTORCH_ALLOC_CONF" not in os.environ
    assert os.environ["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"
    assert capsys.readouterr().out == ""


def test_bnb_needs_bitsandbytes(monkeypatch):
    simulate(monkeypatch, NONE_INSTALLED)
    with pytest.raises(probe.MissingExtra, match=r"^int4-bnb needs bitsandbytes, which is not installed: "
                                                 r"pip install 'sftbench\[gpu\]'$"):
        probe.require("int4-bnb")
    simulate(monkeypatch, NONE_INSTALLED, {"bitsandbytes": ok})
    probe.require("int4-bnb")


def test_unknown_quantization_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        probe.require("int3-awq")
    assert str(error.value) == "unknown quantization 'int3-awq'; valid: bf16, int4-gptq, int8-gptq, int4-bnb"
    probe.require("bf16")

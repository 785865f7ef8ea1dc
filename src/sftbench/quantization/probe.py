"""Which quantization libraries are installed and import, and the one message naming the extra to install.

Importing gptqmodel sets PYTORCH_ALLOC_CONF=expandable_segments:True,... (and CUDA_DEVICE_ORDER)
when they are unset, which would change the allocator and so the memory figures: every import made
here keeps the caller's environment.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
from collections.abc import Iterator
from functools import cache
from importlib import metadata

from packaging.version import Version

from sftbench.spec import QUANTIZATIONS

GPTQMODEL_MIN_VERSION = Version("7.0")
GPU_EXTRA = "pip install 'sftbench[gpu]'"
GPTQ_EXTRA = "pip install 'sftbench[gptq]'"
# Variables gptqmodel sets on import when they are unset.
GUARDED_ENVIRON = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "CUDA_DEVICE_ORDER")


class MissingExtra(RuntimeError):
    """A quantization whose packages are not installed or do not import."""


def require(quantization: str) -> None:
    """Raise MissingExtra (one message, naming the extra to install) if `quantization` cannot run here."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; valid: {', '.join(QUANTIZATIONS)}")
    if quantization == "int4-bnb" and importlib.util.find_spec("bitsandbytes") is None:
        raise MissingExtra(f"int4-bnb needs bitsandbytes, which is not installed: {GPU_EXTRA}")
    if quantization.endswith("-gptq"):
        backend, reason = gptq_backend()
        if backend is None:
            raise MissingExtra(f"{quantization} needs gptqmodel >= 7.0 and optimum ({reason}): {GPTQ_EXTRA}")


@cache
def gptq_backend() -> tuple[str | None, str]:
    """("auto-gptq" | "gptqmodel" | None, why): the GPTQ library this stack can train with.

    auto-gptq only where it is installed, imports and transformers is older than 5 (a stack
    sftbench does not support: there transformers' own GPTQ quantizer would pick auto-gptq); else
    gptqmodel >= 7.0 with optimum where both import. auto-gptq is unmaintained and does not import
    on transformers 5 / peft 0.21: this says so instead of crashing. Importing is the test (a broken
    install is caught whatever it raises); it is done once per process, keeping the environment.
    """
    transformers_version = installed_version("transformers")
    notes = []
    auto_gptq = installed_version("auto-gptq")
    if auto_gptq is not None:
        error = import_quietly("auto_gptq")
        if error is not None:
            notes.append(f"auto-gptq {auto_gptq} is installed but does not import on transformers "
                         f"{transformers_version} ({error})")
        elif Version(transformers_version) >= Version("5"):
            notes.append(f"auto-gptq {auto_gptq} imports but does not support transformers {transformers_version} "
                         "(it needs < 5)")
        else:
            return "auto-gptq", f"auto-gptq {auto_gptq} on transformers {transformers_version}"

    gptqmodel, optimum = installed_version("gptqmodel"), installed_version("optimum")
    if gptqmodel is None:
        notes.append("gptqmodel is not installed")
    elif Version(gptqmodel) < GPTQMODEL_MIN_VERSION:
        notes.append(f"gptqmodel {gptqmodel} is too old (needs >= {GPTQMODEL_MIN_VERSION})")
    elif optimum is None:
        notes.append(f"gptqmodel {gptqmodel} is installed but optimum is not")
    elif (error := import_quietly("gptqmodel", "optimum.gptq")) is not None:
        notes.append(f"gptqmodel {gptqmodel} with optimum {optimum} does not import ({error})")
    else:
        return "gptqmodel", "; ".join([*notes, f"using gptqmodel {gptqmodel} with optimum {optimum}"])
    return None, "; ".join(notes)


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _kept_environ() -> Iterator[None]:
    """Restore GUARDED_ENVIRON on exit, whatever the block set."""
    saved = {name: os.environ.get(name) for name in GUARDED_ENVIRON}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def import_quietly(*modules: str) -> str | None:
    """Import `modules`: None if every one imports, else "ExceptionType: message" of the first that fails.

    gptqmodel prints a banner when imported: it is swallowed, and the environment is kept.
    """
    with _kept_environ(), contextlib.redirect_stdout(io.StringIO()):
        for module in modules:
            try:
                importlib.import_module(module)
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # noqa: BLE001 - a broken install may raise anything on import
                return f"{type(error).__name__}: {error}"
    return None

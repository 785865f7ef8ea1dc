"""Fixtures of the report's tests: LoRA and full specs of qwen-7b-chat, results by key, the Markdown's tables."""

from pathlib import Path

import pytest

from sftbench.spec import CaseSpec

H200_BASELINES = Path(__file__).parents[3] / "baselines" / "nvidia-h200"


def lora_spec(model_type: str = "qwen-7b-chat", **changes) -> CaseSpec:
    return CaseSpec(model_type, **changes)


def full_spec(model_type: str = "qwen-7b-chat", **changes) -> CaseSpec:
    return CaseSpec(model_type, sft_type="full", **changes)


def by_key(*results) -> dict:
    return {r.key: r for r in results}


def markdown_sections(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """{section title: (header cells, [row cells])} of every Markdown table under a ## or ### heading."""
    found, title = {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if title in found:
                found[title][1].append(cells)
            else:
                found[title] = (cells, [])
    return found


@pytest.fixture
def lora():
    return lora_spec


@pytest.fixture
def full():
    return full_spec


@pytest.fixture
def results_of():
    return by_key


@pytest.fixture
def sections():
    return markdown_sections


@pytest.fixture
def h200_baselines() -> Path:
    """The committed H200 baselines: results written before Result.model_shape existed."""
    return H200_BASELINES

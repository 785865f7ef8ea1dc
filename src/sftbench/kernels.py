"""What a traced step's GPU time was spent on: kernels by name, names by family, and the epoch by family.

A traced step records each kernel it launched by name, with its count and summed duration
(Result.kernel_step_kernels, names in Result.kernel_names). The rules of kernel_families.toml give each
name its family; Result.kernel_step_weights give each traced step's share of the projected epoch, so any
per-step quantity (a family's seconds, one kernel's) projects over the epoch as the step total does. No
torch here: reports and comparisons read results without it.
"""

from __future__ import annotations

import re
import tomllib
from collections import defaultdict
from functools import cache
from importlib import resources

OTHER = "other"
# The self-test's injected work (sftbench.injection): a spin kernel that stands for extra time of a family.
INJECTED = re.compile(r"^self-test spin \((?P<family>.+)\)$")


# The rules file; tests point it at their own.
RULES = resources.files("sftbench").joinpath("kernel_families.toml")


class BadRules(ValueError):
    """A rules file that cannot classify kernels: one line naming the file and, where one is wrong, the rule."""


@cache
def rules() -> tuple[tuple[str, ...], tuple[tuple[re.Pattern, str], ...]]:
    """(the families in the order they are shown, the (pattern, family) rules in the order they apply)."""
    try:
        data = tomllib.loads(RULES.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise BadRules(f"{RULES}: not TOML ({error})") from None
    families = data.get("families", [])
    if not isinstance(families, list) or OTHER not in families:
        raise BadRules(f"{RULES}: its families must be a list that includes {OTHER!r}")
    compiled = []
    for number, rule in enumerate(data.get("rule", []), start=1):
        pattern, family = rule.get("pattern"), rule.get("family")
        where = f"{RULES}: rule {number} (pattern {pattern!r})"
        if family not in families:
            raise BadRules(f"{where} names the family {family!r}, which is not among its families")
        try:
            compiled.append((re.compile(pattern), family))
        except (TypeError, re.error) as error:
            raise BadRules(f"{where} is not a regular expression ({error})") from None
    return tuple(families), tuple(compiled)


def families() -> tuple[str, ...]:
    return rules()[0]


@cache
def family_of(name: str) -> str:
    """The family of a kernel's short name: the first rule that matches, else "other"."""
    injected = INJECTED.match(name)
    if injected:
        return injected["family"]
    return next((family for pattern, family in rules()[1] if pattern.search(name)), OTHER)


@cache
def short_name(raw: str) -> str:
    """A kernel's name as recorded: demangled (CUPTI gives the mangled symbol), without `void ` and without its
    parameter list, which repeats what the template arguments say; cut to 300 characters."""
    try:
        import cxxfilt

        name = cxxfilt.demangle(raw)
    except Exception:  # noqa: BLE001 - not a mangled C++ name (Triton, nvjet), or no cxxfilt: keep it as it is
        name = raw
    name = name.removeprefix("void ")
    if name.endswith(")"):
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i] if not name[:i].endswith("operator") else name
                break
    return name[:300]


def step_families(names: list[str], kernels: list[list[int]]) -> dict[str, float]:
    """Seconds per family of one traced step: `kernels` are its [name index, count, nanoseconds] entries."""
    seconds: dict[str, float] = defaultdict(float)
    for index, _, nanoseconds in kernels:
        seconds[family_of(names[index])] += nanoseconds / 1e9
    return {family: seconds[family] for family in families() if family in seconds}


def projected(per_step: list[dict[str, float]], weights: list[float]) -> dict[str, float]:
    """Epoch seconds per key (family or kernel name): each traced step's values times its weight, summed."""
    total: dict[str, float] = defaultdict(float)
    for values, weight in zip(per_step, weights):
        for key, seconds in values.items():
            total[key] += weight * seconds
    return dict(total)


def epoch_families(result) -> dict[str, float] | None:
    """The epoch's kernel seconds per family, classified by the current rules; None without kernel names."""
    if not result.kernel_names or not result.kernel_step_weights:
        return None
    steps = [step_families(result.kernel_names, kernels) for kernels in result.kernel_step_kernels]
    return projected(steps, result.kernel_step_weights)


def epoch_kernels(result, family: str | None = None) -> dict[str, float]:
    """The epoch's seconds of each kernel (of `family`, where given), by short name."""
    names = result.kernel_names
    steps = [{names[i]: ns / 1e9 for i, _, ns in kernels if family is None or family_of(names[i]) == family}
             for kernels in result.kernel_step_kernels]
    return projected(steps, result.kernel_step_weights)


def micro_steps(result) -> float:
    """How many micro-steps the epoch's projection stands for (the traced micro-steps' weights)."""
    return sum(w for w, tokens in zip(result.kernel_step_weights, result.kernel_step_tokens) if tokens > 0)


def kernel_table(results) -> dict:
    """The kernels of results as compact data (`python -m sftbench kernels --json`): every short name once, and
    per configuration its kernels as [name index, GPU-seconds of the epoch], largest first."""
    names: dict[str, int] = {}
    configurations = {}
    for result in results:
        seconds = epoch_kernels(result)
        configurations[result.key] = [[names.setdefault(name, len(names)), round(value, 6)]
                                      for name, value in sorted(seconds.items(), key=lambda item: -item[1])]
    return {"names": list(names), "configurations": configurations}

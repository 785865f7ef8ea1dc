"""What a traced step's GPU time was spent on: kernels by name, names by family, and the epoch by family.

A traced step (result.TracedStep) records each kernel it launched by name, with its count and summed duration,
and its seconds per family by the rules of kernel_families.toml, whose version (a digest) the result keeps:
families are stored once, and read again from the names only where the rules have changed since. Each traced
step's weight is its share of the projected epoch, so any per-step quantity (a family's seconds, one kernel's)
projects over the epoch as the step total does; repeats of a step (weight 0) measure how much each family's
time repeats. No torch here: reports and comparisons read results without it.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections import defaultdict
from functools import cache
from importlib import resources

from sftbench.result import Kernels, TracedStep

OTHER = "other"
# The self-test's injected work (sftbench.injection): a spin kernel that stands for extra time of a family.
INJECTED = re.compile(r"^self-test spin \((?P<family>.+)\)$")


# The rules file; tests point it at their own.
RULES = resources.files("sftbench").joinpath("kernel_families.toml")


class BadRules(ValueError):
    """A rules file that cannot classify kernels: one line naming the file and, where one is wrong, the rule."""


@cache
def rules_version() -> str:
    """The version of the rules, stored with the families they made (Kernels.rules): a digest of the file."""
    return hashlib.sha256(RULES.read_bytes()).hexdigest()[:12]


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


def classify(names: list[str], kernels: list[list[int]]) -> dict[str, float]:
    """Seconds per family of one traced step: `kernels` are its [name index, count, nanoseconds] entries."""
    seconds: dict[str, float] = defaultdict(float)
    for index, _, nanoseconds in kernels:
        seconds[family_of(names[index])] += nanoseconds / 1e9
    return {family: seconds[family] for family in families() if family in seconds}


def step_families(record: Kernels, step: TracedStep) -> dict[str, float]:
    """A traced step's seconds per family: as stored where today's rules made them, else classified again (a
    result from before a change of kernel_families.toml is judged by today's rules, never by its own)."""
    return step.families if record.rules == rules_version() else classify(record.names, step.kernels)


def projected(per_step: list[dict[str, float]], weights: list[float]) -> dict[str, float]:
    """Epoch seconds per key (family or kernel name): each traced step's values times its weight, summed."""
    total: dict[str, float] = defaultdict(float)
    for values, weight in zip(per_step, weights):
        for key, seconds in values.items():
            total[key] += weight * seconds
    return dict(total)


def epoch_families(record: Kernels) -> dict[str, float] | None:
    """The epoch's kernel seconds per family, by today's rules; None without kernel names."""
    steps = record.projected_steps
    if not record.names or not steps:
        return None
    return projected([step_families(record, step) for step in steps], [step.weight for step in steps])


def epoch_kernels(record: Kernels, family: str | None = None) -> dict[str, float]:
    """The epoch's seconds of each kernel (of `family`, where given), by short name."""
    names, steps = record.names, record.projected_steps
    per_step = [{names[i]: ns / 1e9 for i, _, ns in step.kernels if family is None or family_of(names[i]) == family}
                for step in steps]
    return projected(per_step, [step.weight for step in steps])


def family_noise_pct(record: Kernels) -> dict[str, float]:
    """How much each family's share of its step repeats, in %: the pooled standard deviation of the share's
    relative deviations from their mean among the traced steps of one batch (a step and its repeats, each
    group of the same kernels). {} where no step was repeated. A family's share, not its seconds: a GPU whose
    clock moves between repeats moves the whole step, not the share."""
    groups: dict[int, list[TracedStep]] = defaultdict(list)
    for step in record.steps:
        if step.repeat_of is not None:
            groups[step.repeat_of].append(step)
    squares: dict[str, float] = defaultdict(float)
    freedom = 0
    for original, repeats in groups.items():
        members = [record.steps[original], *repeats]
        shares = [{family: seconds / step.seconds for family, seconds in step_families(record, step).items()}
                  for step in members]
        freedom += len(members) - 1
        for family in set().union(*shares):
            values = [share.get(family, 0.0) for share in shares]
            center = sum(values) / len(values)
            squares[family] += sum((value / center - 1) ** 2 for value in values) if center else 0.0
    return {family: 100 * math.sqrt(total / freedom) for family, total in squares.items()} if freedom else {}


def epoch_error_factor(record: Kernels, family: str) -> float:
    """How much of one step's relative error in a family's time is left in the epoch's (epoch_families): the
    projection weighs the traced steps, whose errors are independent, so a relative error e of each step is one of
    e * sqrt(sum((weight * seconds)^2)) / sum(weight * seconds) in the epoch; 1 where no step has the family."""
    values = [step.weight * step_families(record, step).get(family, 0.0) for step in record.projected_steps]
    total = sum(values)
    return math.sqrt(sum(value * value for value in values)) / total if total else 1.0


def largest_family(record: Kernels) -> dict | None:
    """The family with the most GPU time and its share of the step (today's rules), where there are kernel names."""
    families = epoch_families(record)
    if not families or not sum(families.values()):
        return None
    name = max(families, key=families.get)
    return {"family": name, "share_pct": 100 * families[name] / sum(families.values())}


def kernel_table(results) -> dict:
    """The kernels of results as compact data (`python -m sftbench kernels --json`): every short name once, and
    per configuration its kernels as [name index, GPU-seconds of the epoch], largest first."""
    names: dict[str, int] = {}
    configurations = {}
    for result in results:
        seconds = epoch_kernels(result.kernels)
        configurations[result.key] = [[names.setdefault(name, len(names)), round(value, 6)]
                                      for name, value in sorted(seconds.items(), key=lambda item: -item[1])]
    return {"names": list(names), "configurations": configurations}

#!/usr/bin/env python3
"""The packages whose installed release differs from the pinned stack, as Markdown for a CI job summary: what the
newest releases changed under sftbench when its tests fail on them. The stack is constraints.txt's pins and torch
as the Makefile installs it (its default TORCH), which constraints.txt leaves to the Makefile.
Usage: python scripts/stack-drift.py CONSTRAINTS MAKEFILE  (the interpreter whose packages are compared)."""

import re
import sys
from importlib import metadata
from pathlib import Path


def pins(text: str) -> dict[str, str]:
    """{package: version} of the `name==version` lines (comments and other specifiers left out)."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s#;]+)\s*(#.*)?", line)
        if match:
            found[match[1]] = match[2]
    return found


def makefile_pins(text: str) -> dict[str, str]:
    """{torch: version} of the Makefile's `TORCH ?= torch==VERSION`; empty where its default pins no version."""
    default = re.search(r"^TORCH \?= *(.*)$", text, re.MULTILINE)
    return pins(default[1]) if default else {}


def installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def release(version: str) -> str:
    """The version without its local label: torch's CPU build 2.13.0+cpu is the release 2.13.0."""
    return version.partition("+")[0]


def main(constraints: str, makefile: str) -> int:
    pinned = {**makefile_pins(Path(makefile).read_text()), **pins(Path(constraints).read_text())}
    differ = [(name, version, installed(name)) for name, version in pinned.items()
              if release(installed(name)) != version]
    stack = f"{constraints} and the torch of {makefile}"
    print(f"### Releases that differ from {stack}\n")
    if not differ:
        print(f"Every package of {stack} is installed at its pinned version: the failure is not a new release's.")
        return 0
    print("| package | pinned | installed |\n|---|---|---|")
    for name, version, now in differ:
        print(f"| {name} | {version} | {now} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]) if len(sys.argv) == 3 else "usage: scripts/stack-drift.py CONSTRAINTS MAKEFILE")

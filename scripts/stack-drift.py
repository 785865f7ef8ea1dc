#!/usr/bin/env python3
"""The packages whose installed release differs from the version constraints.txt pins, as Markdown for a CI job
summary: what the newest releases changed under sftbench when its tests fail on them.
Usage: python scripts/stack-drift.py CONSTRAINTS  (the interpreter whose packages are compared)."""

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


def installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def main(path: str) -> int:
    differ = [(name, pinned, installed(name)) for name, pinned in pins(Path(path).read_text()).items()
              if installed(name) != pinned]
    print(f"### Releases that differ from {path}\n")
    if not differ:
        print(f"Every package {path} pins is installed at its pinned version: the failure is not a new release's.")
        return 0
    print(f"| package | {path} | installed |\n|---|---|---|")
    for name, pinned, now in differ:
        print(f"| {name} | {pinned} | {now} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]) if len(sys.argv) == 2 else "usage: scripts/stack-drift.py CONSTRAINTS")

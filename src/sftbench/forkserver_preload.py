"""Imported first by the launcher's forkserver, before sftbench.case (see sftbench.lifeline).

Importing it is what it does: the importing process dies with the thread that started it, and a
SFTBENCH_FAULT=hang-start (sftbench.faults) hangs it here, as a stuck import would. Nothing else
imports it.
"""

from sftbench import faults, lifeline

lifeline.die_with_parent()
faults.at("start")

"""The launcher's forkserver preload: it must be able to fork CUDA-clean case processes."""

import subprocess
import sys


def test_the_forkserver_preload_imports_nothing_that_initializes_cuda():
    # bitsandbytes initializes CUDA when it is imported, and peft imports it wherever it is installed;
    # a forkserver holding either could only spawn cases (12 s each on an H200 host), never fork them.
    code = ("import sys, sftbench.worker; "
            "print(sorted(m for m in ('peft', 'bitsandbytes', 'gptqmodel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"

"""cpu_memory_reuse: freed CPU memory stays in the process (glibc), and training computes the same numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import toy_config

from acerec_recbole.benchmark import PROJECT_ROOT
from acerec_recbole.quick_start import glibc_mallopt

ENV = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}

# allocates, fills and frees a 512 MiB tensor, then counts the page faults of a slightly smaller one (a
# training step's next activations; an aligned request of exactly the same size does not fit the freed block)
REALLOCATE = """
import json, resource, sys, torch
from acerec_recbole.quick_start import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "on" else False
torch.empty(2**27).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(2**27 - 4096).fill_(1.0)
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""

TRAIN = """
import json, sys
from acerec_recbole import run
result = run("ACERec", "toyshop", config_dict=json.loads(sys.argv[1]), saved=False)
history = [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in result["trainer"].epoch_history]
print(json.dumps({"history": history, "test": result["test_result"]}))
"""


def python(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], env=ENV, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(glibc_mallopt() is None, reason="the C library has no mallopt (not glibc): nothing to reuse")
def test_freed_memory_is_reused_instead_of_page_faulted_in_again():
    off, on = python(REALLOCATE, "off"), python(REALLOCATE, "on")
    assert on["applied"] and not off["applied"]
    assert off["faults"] > 100  # 512 MiB handed back and faulted in again (2 MiB pages: 256 faults)
    assert on["faults"] < 0.1 * off["faults"], (off, on)


def test_training_computes_the_same_numbers_with_and_without_memory_reuse(toy_data, sid_cache):
    settings = toy_config(toy_data, sid_cache, epochs=2, state="ERROR")
    runs = [python(TRAIN, json.dumps({**settings, "cpu_memory_reuse": reuse})) for reuse in (False, True)]
    assert runs[0]["history"] and runs[0] == runs[1]

"""`coreseg.allocator`: freed image-sized blocks are reused without fresh pages (what made a click's decoder pass
46 ms instead of 31–34 on this machine). Run in child processes: the setting is per process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHURN = """
import resource, sys
import numpy as np
sys.path.insert(0, {root!r})
if {keep}:
    from coreseg.allocator import keep_freed_memory
    assert keep_freed_memory()
def churn():  # tensors of a decoder pass's sizes, allocated, written and freed
    for mb in (4, 8, 16, 24, 8, 4):
        a = np.ones(mb * 262144, np.float32)
        b = np.ones(mb * 131072, np.float32)
        del a, b
churn()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _faults(keep: bool) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN.format(root=str(ROOT), keep=keep)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_blocks_are_reused_without_page_faults():
    kept, default = _faults(True), _faults(False)
    assert kept < 50, kept                # every block comes back from the heap
    assert default > 10 * max(kept, 10)  # glibc's defaults hand them back to the OS and fault them in again

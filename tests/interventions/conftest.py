"""Steering tests run torch single-threaded.

Greedy generation is hundreds of small ops per token. With two intra-op threads on a 2-core
machine that anything else is also using, the threads' spin-waits dominate: measured here, 16
cached tokens took 7.8 s with 2 threads and 1.05 s with 1 thread under the same load. One
thread is the robust setting for these tests; the previous setting is restored afterwards.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

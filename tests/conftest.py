"""Hygiene shared by every test."""

from __future__ import annotations

import os

# Nothing is downloaded in tests: models come from configs, tokenizers and datasets from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
import torch.distributed as dist

# The tests' tensors are tiny: intra-op threads only add contention on a shared 2-core CI
# (a 40-step fit measured 12 s with 2 threads on a loaded machine, 1 s with one).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _destroy_process_group():
    """A process group some test initialised in-process must not leak into the next test."""
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""The end of a multi-process run: the process group torn down while the interpreter is whole.

Lightning leaves a gloo process group (CPU DDP and FSDP) alive until the process exits. Its worker
threads then outlive Python's finalization, and one that drops the last reference to a tensor owned by
Python needs the GIL, which a finalizing interpreter no longer hands out: that thread is unwound in a
``noexcept`` frame and the process aborts ("terminate called without an active exception", SIGABRT)
after the run is done. Destroying the group joins those threads first. The barrier before it makes
every rank arrive first, so no rank tears down what another still uses.
"""

from __future__ import annotations

import torch


def end_process_group() -> None:
    """Wait for every rank, then destroy the default process group (and every other); a no-op without one.

    Call it on every rank at the same point: after a run that every rank finished, or stopped on a
    decision every rank shares (the non-finite stop), never after one rank's own failure, which the
    others would wait for in vain.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        nccl = torch.distributed.get_backend() == "nccl"
        # NCCL's barrier is an all-reduce on a device: the rank's own, which Lightning made current
        torch.distributed.barrier(device_ids=[torch.cuda.current_device()] if nccl else None)
        torch.distributed.destroy_process_group()

"""torch.distributed for training: started by ``torchrun``, read from its environment.

``torchrun --nproc_per_node=N -m robustode train …`` sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`setup` joins that process
group (nccl on CUDA, gloo on the CPU) unless the caller already has, and
picks the device (``cuda:LOCAL_RANK`` under torchrun on CUDA). Rank 0 alone
writes files and prints; every rank trains on its contiguous slice of each
global batch and DDP averages the gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import InputError, RobustodeError


@dataclass
class DistContext:
    """Where this process stands: its rank, the world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this setup created the process group and destroys it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (a small picklable value), in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank: one tiny all-reduce under DDP, so that all
        ranks take the same branch (one rank skipping a backward would hang the others)."""
        if not self.distributed:
            return flag
        failed = torch.tensor([0 if flag else 1], device=self.device)
        dist.all_reduce(failed)
        return int(failed.item()) == 0

    def flags_any(self, *flags: bool) -> list[bool]:
        """For each flag, whether it is set on any rank (one small all-reduce under DDP)."""
        if not self.distributed:
            return [bool(f) for f in flags]
        values = torch.tensor([1 if f else 0 for f in flags], device=self.device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return [bool(v) for v in values.tolist()]

    def on_main(self, fn: Any) -> Any:
        """``fn()`` on rank 0 alone; a user error it raises is raised on every rank (the
        others would otherwise wait at the next collective forever). Returns fn's value on
        rank 0, None elsewhere."""
        error: RobustodeError | None = None
        value = None
        if self.is_main:
            try:
                value = fn()
            except RobustodeError as exc:
                error = exc
        shared = self.all_gather(None if error is None else (type(error).__name__, str(error)))
        if error is not None:
            raise error
        if shared[0] is not None:
            raise InputError(shared[0][1])
        return value

    def teardown(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (the local rank's GPU) when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    # torch.device takes a dozen backends robustode never runs on, and refuses unknown names
    # with a RuntimeError listing them all; name only what is accepted here
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for, but this machine has no CUDA device")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise InputError(f"device {device} does not exist ({torch.cuda.device_count()} GPUs)")
    return device


def setup(device_name: str) -> DistContext:
    """Join the process group torchrun describes (or the caller's), and pick the device."""
    already = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if already else int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not already:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        owns = True
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        owns_group=owns,
    )


class DistributedModel(DistributedDataParallel):
    """DDP that still answers the wrapped model's own attributes (``perturbed``,
    ``ode_blocks``, …), so a defense can use them without knowing about DDP."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if name == "module" or "module" not in modules:
                raise
            return getattr(modules["module"], name)


def wrap(model: nn.Module, context: DistContext) -> nn.Module:
    """``model`` under DDP when the world has more than one process, else itself."""
    if not context.distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedModel(model, device_ids=device_ids)

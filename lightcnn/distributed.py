"""Data-parallel training in several processes: ``torch.distributed`` and DDP.

Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
arXiv 2006.15704 (DistributedDataParallel: gradients all-reduced in buckets while the
backward pass still runs). Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet
in 1 Hour", arXiv 1706.02677 (what changes when the global batch grows).

Data parallelism runs one copy of the model per process (one per GPU, or a few CPU
processes). Every process sees a different part of each batch, and after the backward
pass the gradients are averaged over the processes (an all-reduce), so every copy takes
the same optimizer step and the weights stay identical without ever being sent. Batch
norm statistics are the exception: each copy updates its own from its part of the batch;
DDP copies rank 0's to the others before every forward pass (``broadcast_buffers``), and
:func:`broadcast_buffers` does it once more when a loop wants them equal, before scoring
or saving. ``torchrun --nproc_per_node=N script.py`` starts the processes and tells each
its ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` reads them.

:func:`lightcnn.train.fit` does all of this by itself when a process group is initialized;
the helpers here serve a loop of one's own. Backends: ``nccl`` between GPUs, ``gloo``
between CPU processes (what the tests use). Not taught in a chapter: the README's section
"Your own training loop, on one machine or several" shows it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset

from ._checks import check_instance, check_int, check_mapping, check_module, check_sequence, is_real

__all__ = ["init_distributed", "is_distributed", "get_rank", "get_world_size",
           "is_main_process", "unwrap", "distributed_loader", "shard_dataset",
           "broadcast_buffers", "broadcast_tensors", "all_reduce_sum"]

_BACKENDS = ("nccl", "gloo")


def init_distributed(backend: str | None = None) -> int:
    """Join the process group that ``torchrun`` set up, and return this process's rank.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (torchrun sets
    them); without ``WORLD_SIZE`` (a plain ``python script.py``) it does nothing and
    returns 0, so one script runs both ways. With ``nccl`` each process takes the GPU
    ``cuda:LOCAL_RANK``. Calling it again once joined returns the rank.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; by default ``nccl`` when CUDA is present,
            else ``gloo``.

    Raises:
        ValueError: an unknown backend, or ``nccl`` on a machine without CUDA.
    """
    if backend is not None and backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS} or None, got {backend!r}")
    if is_distributed():
        return dist.get_rank()
    if "WORLD_SIZE" not in os.environ:
        return 0
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend='nccl' needs CUDA GPUs; use 'gloo' on CPUs")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return dist.get_rank()


def is_distributed() -> bool:
    """True when this process is part of an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and when not distributed): the process that prints and saves."""
    return get_rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The module a ``DistributedDataParallel`` wraps, or ``model`` itself.

    Layer names, masks and batch norms belong to the wrapped module: DDP's names all carry
    a ``module.`` prefix.
    """
    check_module("model", model)
    return model.module if isinstance(model, DistributedDataParallel) else model


def distributed_loader(loader: DataLoader, seed: int = 0) -> DataLoader:
    """``loader`` again, each process reading its ``1 / world_size`` share of every batch.

    A :class:`~torch.utils.data.DistributedSampler` (shuffled with ``seed`` like
    ``loader`` when ``loader`` shuffles) deals each process every ``world_size``-th item
    of one permutation common to all processes, and the batch size is divided by the
    world size, so the *global* batch, the steps per epoch, and hence a recipe's learning
    rate and schedule, stay ``loader``'s. Call ``loader.sampler.set_epoch(epoch)`` before
    each epoch (``lc.fit`` does) to draw a new permutation.

    Raises:
        ValueError: ``loader`` has no fixed batch size, or one the world size does not
            divide.
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(f"loader must be a DataLoader, got {type(loader).__name__}")
    check_int("seed", seed, 0)
    world = get_world_size()
    if loader.batch_size is None:
        raise ValueError("loader must have a fixed batch_size (no custom batch_sampler)")
    if loader.batch_size % world:
        raise ValueError(f"loader.batch_size={loader.batch_size} must be divisible by the "
                         f"world size {world}: every process takes an equal share")
    sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=get_rank(),
                                 shuffle=isinstance(loader.sampler, RandomSampler), seed=seed)
    return DataLoader(loader.dataset, batch_size=loader.batch_size // world, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      worker_init_fn=loader.worker_init_fn,
                      persistent_workers=loader.persistent_workers)


def shard_dataset(dataset: Dataset) -> Dataset:
    """Every ``world_size``-th item of ``dataset`` from this process's rank on.

    Unlike a ``DistributedSampler`` nothing is padded, so sums over the shards (of losses,
    of correct answers) are exactly the sums over the dataset: for scoring, not training.
    """
    check_instance("dataset", dataset, Dataset, "a torch Dataset")
    world = get_world_size()
    return dataset if world == 1 else Subset(dataset, range(get_rank(), len(dataset), world))


@torch.no_grad()
def broadcast_tensors(tensors: Mapping[str, torch.Tensor], src: int = 0
                      ) -> dict[str, torch.Tensor]:
    """Rank ``src``'s values of ``tensors`` on every process (new tensors; bool kept bool).

    Masks computed from identical weights are identical already; broadcasting them makes
    that a guarantee rather than an assumption about floating point. Does nothing (returns
    copies) when not distributed.
    """
    check_mapping("tensors", tensors)
    for key, tensor in tensors.items():
        check_instance(f"tensors[{key!r}]", tensor, torch.Tensor)
    _check_src(src)
    out = {}
    for name, tensor in tensors.items():
        # gloo has no bool reduction ops: send masks as uint8
        value = tensor.detach().to(torch.uint8 if tensor.dtype == torch.bool else tensor.dtype,
                                   copy=True)
        if is_distributed():
            dist.broadcast(value, src)
        out[name] = value.bool() if tensor.dtype == torch.bool else value
    return out


@torch.no_grad()
def broadcast_buffers(model: nn.Module, src: int = 0) -> nn.Module:
    """Copy rank ``src``'s buffers (batch-norm statistics, pruning masks, quantization
    observers) into every process's ``model``, in place; returns ``model``.

    DDP broadcasts the buffers it found at construction before each forward pass, so after
    the last step each process still holds the statistics of its own last batch, and masks
    attached after DDP wrapped the model are not among them.
    """
    check_module("model", model)
    _check_src(src)
    if is_distributed():
        for buffer in unwrap(model).buffers():
            if buffer.dtype == torch.bool:
                as_bytes = buffer.to(torch.uint8)
                dist.broadcast(as_bytes, src)
                buffer.copy_(as_bytes.bool())
            else:
                dist.broadcast(buffer, src)
    return model


def all_reduce_sum(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """The sums of ``values`` over all processes (float64, on ``device``: a GPU for nccl);
    ``values`` as floats when not distributed."""
    check_sequence("values", values)
    if not all(is_real(v) for v in values):
        raise TypeError(f"values must be a list or tuple of real numbers, got {values!r}")
    check_instance("device", device, (str, torch.device), "a str or a torch.device")
    try:
        torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got "
                         f"{device!r} ({err})") from None
    if not is_distributed():
        return [float(v) for v in values]
    total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def _check_src(src) -> None:
    """``src`` names a rank of the process group (0 when not distributed)."""
    check_int("src", src, 0, get_world_size() - 1)

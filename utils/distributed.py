"""Data-parallel training under torchrun: process group, ranks, sharding, agreement.

    torchrun --standalone --nproc_per_node=2 -m Diffusion_run_scripts.DiffusionMain

Without torchrun's environment (WORLD_SIZE unset) every function here is the single-process
identity: rank 0 of 1, nothing is reduced, nothing changes.

Design: every rank holds the same RNG state (the same SEED, and every random draw is made for
the global batch, then sliced), so rank r's share of a global step is exactly the r-th slice of
what one process would draw for the whole batch: the images of a step, their noise, timesteps
and label dropout are those of a single-process run with the same BATCH_SIZE. Gradients are
averaged by DistributedDataParallel; BatchNorm statistics are taken over the global batch.

Randomness drawn inside a network's forward pass (dropout masks) cannot be drawn for the global
batch, and with one shared stream every rank would draw the same mask for its own images. The
training forward therefore runs under own_rng(): each rank draws it from a stream of its own
(seeded from SEED and the rank, saved in the checkpoint per rank), and the shared stream is left
exactly where it was. Without a process group own_rng does nothing, so a single process draws
as it always did; a 2-process run equals a 1-process run where there is no dropout.
"""
import contextlib
import datetime
import os

import torch
import torch.distributed as dist

from utils.errors import UserError

TIMEOUT_MINUTES = 10.0  # a collective waiting longer than this fails (env DDP_TIMEOUT_MINUTES)


def collective_timeout() -> datetime.timedelta:
    """How long a rank waits in a collective for a peer that hangs: DDP_TIMEOUT_MINUTES from
    the environment (every rank gets torchrun's), else TIMEOUT_MINUTES. Long enough for rank 0
    to write an epoch's figures while the others wait at the checkpoint barrier."""
    text = os.environ.get("DDP_TIMEOUT_MINUTES", "").strip()
    try:
        minutes = float(text) if text else TIMEOUT_MINUTES
    except ValueError:
        minutes = -1.0
    if not 0 < minutes < float("inf"):
        raise UserError(f"DDP_TIMEOUT_MINUTES={text!r} must be a number of minutes > 0")
    return datetime.timedelta(minutes=minutes)


def torchrun_world() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and shows progress. Before the
    process group exists, torchrun's RANK says which process this is."""
    return (rank() if is_distributed() else int(os.environ.get("RANK", "0"))) == 0


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (nccl on CUDA, one GPU per LOCAL_RANK; gloo on the CPU) and
    return this process's device (`device`, resolved from DEVICE, placed on LOCAL_RANK's GPU);
    without torchrun, `device` itself."""
    if torchrun_world() <= 1 or is_distributed():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs here; "
                            f"start at most that many processes per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=collective_timeout())
    return device


def shutdown() -> None:
    """Leave the process group (a no-op without one)."""
    if is_distributed():
        dist.destroy_process_group()


def local_batch(batch_size: int) -> int:
    """This rank's share of the global BATCH_SIZE (which must divide evenly)."""
    world = world_size()
    if batch_size % world:
        raise UserError(f"BATCH_SIZE={batch_size} does not divide into {world} processes; "
                        f"use a multiple of {world}")
    return batch_size // world


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a tensor drawn or indexed for the global batch (dim 0)."""
    world = world_size()
    if world == 1:
        return x
    size = len(x) // world
    return x[rank() * size:(rank() + 1) * size]


def randn(shape, dtype=None, device=None) -> torch.Tensor:
    """Standard normal noise for this rank's batch of shape (b, ...): the rank's slice of one
    draw for the global batch (world * b, ...), so every rank's RNG stays the same."""
    return shard(torch.randn((shape[0] * world_size(), *shape[1:]), dtype=dtype, device=device))


def rand(shape, device=None) -> torch.Tensor:
    """Uniform [0, 1) draws for this rank's batch, sliced from a global draw."""
    return shard(torch.rand((shape[0] * world_size(), *shape[1:]), device=device))


def randint(high: int, size: int, device=None) -> torch.Tensor:
    """Integers in [0, high) for this rank's batch of `size`, sliced from a global draw."""
    return shard(torch.randint(0, high, (size * world_size(),), device=device))


_OWN: dict[str, torch.Tensor] = {}  # this rank's own RNG state per device ("cpu", "cuda:1")


def _device_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_device_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@contextlib.contextmanager
def own_rng(device: torch.device):
    """Inside: `device`'s default generator draws from this rank's own stream (dropout masks
    that differ between ranks); after: the shared stream continues as if nothing was drawn.
    A no-op without a process group."""
    if not is_distributed():
        yield
        return
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key, shared = str(device), _device_state(device)
    own = _OWN.get(key)
    if own is None:  # seeded from SEED (the shared stream's seed) and the rank
        seed = (torch.initial_seed() * 1_000_003 + rank() + 1) % 2 ** 63
        own = torch.Generator(device=device).manual_seed(seed).get_state()
    _set_device_state(device, own)
    try:
        yield
    finally:
        _OWN[key] = _device_state(device)
        _set_device_state(device, shared)


def own_rng_states() -> dict[str, torch.Tensor]:
    """This rank's own streams, for its checkpoint."""
    return {key: state.clone() for key, state in _OWN.items()}


def set_own_rng_states(states: dict[str, torch.Tensor] | None) -> None:
    """Restore this rank's own streams (None or {}: start them afresh from SEED and the rank,
    as when a run resumes with another number of processes)."""
    _OWN.clear()
    _OWN.update(states or {})


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """x summed over ranks (a copy; x itself without a process group)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """x averaged over ranks (x itself without a process group)."""
    return all_sum(x) / world_size()


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when `flag` is true on any rank (NaN, deadline, stop)."""
    if not is_distributed():
        return flag
    device = device or (torch.device("cuda", torch.cuda.current_device())
                        if dist.get_backend() == "nccl" else torch.device("cpu"))
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's object on every rank (e.g. the new run's name)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's object, in rank order (a one-element list without a process group)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around a module under torchrun; the module itself otherwise.

    Buffers are not broadcast: every rank computes the same ones (global BatchNorm statistics).
    """
    if not is_distributed():
        return module
    import inspect
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    buffers = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=ids, **buffers)

"""Device and precision choice, autocast, and seeding of every RNG in one place."""
import contextlib
import random

import numpy as np
import torch

from utils.errors import UserError


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (for timing); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA when available, else CPU; 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"DEVICE={name!r} is not a device (use 'auto', 'cpu' or 'cuda')") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("DEVICE='cuda' but no CUDA GPU is available; use DEVICE='auto' or 'cpu'")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("DEVICE='mps' but Apple's MPS is not available here; use "
                            "DEVICE='auto' or 'cpu'")
    elif device.type not in ("cpu", "cuda"):
        raise UserError(f"DEVICE={name!r} is not supported (use 'auto', 'cpu', 'cuda' or 'mps')")
    return device


def bf16_is_fast(device: torch.device) -> bool:
    """True where bf16 matmuls/convs run natively: Ampere+ GPUs, CPUs with AVX512-BF16 or AMX.

    On CPUs without them oneDNN emulates bf16 and a DCGAN step runs about 2x slower than fp32
    (measured here on an AVX512 Xeon without AVX512-BF16), so those stay in fp32.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for PRECISION: 'auto', 'bf16' or 'fp32' (None means no autocast).

    fp16 is never used: on a CPU it is slow and it needs loss scaling on a GPU.
    """
    if precision == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    raise UserError(f"PRECISION={precision!r} is not one of 'auto', 'bf16', 'fp32'")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to dtype on device, or a no-op context for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states as plain tensors and lists, so a checkpoint loads with weights_only=True."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        state["cuda_device"] = torch.cuda.current_device()  # the GPU this process draws on
    return state


def set_rng_state(state: dict) -> None:
    """Restore the states captured by rng_state()."""
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        # The state of the GPU the saving process drew on goes to the GPU this process draws
        # on: under torchrun rank r uses cuda:r, so a state saved by rank 0 (a resume with
        # another number of processes) must land on cuda:r, not on cuda:0 (whose copy of it in
        # rank 0's process was the only one in use).
        saved = list(state["cuda"])
        source = int(state.get("cuda_device", 0))
        if source < len(saved):
            torch.cuda.set_rng_state(saved[source], torch.cuda.current_device())

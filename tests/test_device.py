import numpy as np
import pytest
import random
import torch

from utils.device import (bf16_is_fast, resolve_device, resolve_precision, rng_state,
                          seed_everything, set_rng_state)
from utils.errors import UserError


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if bf16_is_fast(cpu) else None)
    with pytest.raises(UserError):
        resolve_precision("fp16", cpu)


@pytest.mark.parametrize("avx512_bf16, amx, fast", [(True, False, True), (False, True, True),
                                                     (False, False, False)])
def test_auto_precision_on_cpus_with_and_without_bf16(monkeypatch, avx512_bf16, amx, fast):
    """Both answers of the capability check, whatever this machine's CPU has."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16,
                        raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    cpu = torch.device("cpu")
    assert bf16_is_fast(cpu) is fast
    assert resolve_precision("auto", cpu) is (torch.bfloat16 if fast else None)
    assert resolve_precision("fp32", cpu) is None  # an explicit choice always wins
    assert resolve_precision("bf16", cpu) is torch.bfloat16


@pytest.mark.parametrize("major, fast", [(7, False), (8, True), (9, True)])
def test_auto_precision_on_gpus_by_compute_capability(monkeypatch, major, fast):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    cuda = torch.device("cuda")
    assert bf16_is_fast(cuda) is fast
    assert resolve_precision("auto", cuda) is (torch.bfloat16 if fast else None)


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(UserError):
        resolve_device("gpu0")


def test_rng_state_round_trip_restores_every_generator():
    seed_everything(3)
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_a_saved_gpu_stream_lands_on_the_gpu_this_process_draws_on(monkeypatch):
    """Resuming with another number of processes, rank r (on cuda:r) takes rank 0's state: the
    state of the GPU rank 0 drew on (cuda:0) must go to cuda:r, or rank r's shared stream would
    part from the others' (it got rank 0's unused copy of cuda:r before)."""
    import torch

    from utils.device import rng_state, set_rng_state
    state = rng_state()
    saved_by_rank0 = {**state, "cuda": [torch.tensor([0]), torch.tensor([1])], "cuda_device": 0}
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: calls.append((int(s), d)))
    set_rng_state(saved_by_rank0)
    assert calls == [(0, 1)]
    calls.clear()
    set_rng_state({**saved_by_rank0, "cuda_device": 1})  # saved by rank 1 itself
    assert calls == [(1, 1)]

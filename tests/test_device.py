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

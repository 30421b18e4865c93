"""Shared test setup: quiet progress bars, small thread count, and tiny run constants."""
import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_gan(tmp_path):
    """ganmain constants for a run of a few seconds writing into tmp_path."""
    return ["--SAVE_ROOT", str(tmp_path), "--IMAGE_SIZE=16", "--N_TRAIN=128", "--WIDTH=8",
            "--BATCH_SIZE=32", "--EPOCHS=1", "--N_FIXED=8", "--PROGRESSION_ROWS=4",
            "--CHECKPOINT_EVERY=1", "--LATENT_DIM=16", "--PRECISION=fp32"]

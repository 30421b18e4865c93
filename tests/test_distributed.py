"""Data-parallel training: 2 CPU processes (gloo), started here with torchrun's environment.

Two processes with global batch B compute what one process computes with batch B (their share
of every random draw is a slice of the global one, BatchNorm uses the global batch, DDP
averages the gradients), so the weights agree to fp32 all-reduce rounding; a 2-process run
resumes exactly; only rank 0 writes files; a rank that fails stops the other at once.
"""
import os
import socket
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from utils.runs import find_run, load_checkpoint

DIFFUSION = ["--IMAGE_SIZE=8", "--N_TRAIN=64", "--BASE=8", "--CHANNEL_MULT=(1, 2)",
             "--BLOCKS=1", "--ATTENTION=()", "--BATCH_SIZE=16", "--SAMPLE_STEPS=2",
             "--PROGRESSION_ROWS=2", "--WARMUP_STEPS=2", "--PRECISION=fp32", "--TIMESTEPS=20",
             "--DROPOUT=0.0", "--LR_SCHEDULE=cosine", "--DEVICE=cpu", "--LR=5e-4",
             "--PREDICTION=epsilon"]  # flow differs from one process by Adam-amplified rounding
GAN = ["--IMAGE_SIZE=8", "--N_TRAIN=64", "--WIDTH=4", "--LATENT_DIM=8", "--BATCH_SIZE=16",
       "--N_FIXED=4", "--PROGRESSION_ROWS=2", "--PRECISION=fp32", "--DEVICE=cpu",
       "--CHANNELS_LAST=False"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, script: str, argv: list, fail_rank: int,
            written: dict, failure: type = RuntimeError) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), TQDM_DISABLE="1")
    torch.set_num_threads(1)
    root = next(a.split("=", 1)[1] for a in argv if a.startswith("--SAVE_ROOT="))
    opened = []

    def audit(event, args):  # every file this process opens for writing under the run root
        if event != "open" or not isinstance(args[0], (str, os.PathLike)):
            return
        path = os.fspath(args[0])
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        if path.startswith(root) and (any(m in mode for m in "wax")
                                      or flags & (os.O_WRONLY | os.O_RDWR)):
            opened.append(path)
    sys.addaudithook(audit)
    if rank == fail_rank:
        import train.diffusion as loop
        real_step = loop.diffusion_step

        def failing(setup, x0, labels=None):
            if setup.opt.state and next(iter(setup.opt.state.values()))["step"] >= 6:
                raise failure("this rank fails")
            return real_step(setup, x0, labels)
        loop.diffusion_step = failing
    import importlib
    from utils.cli import run_cli
    sys.argv = [script, *argv]
    try:
        run_cli(importlib.import_module(script).main)
    finally:
        written[rank] = opened


def _spawn(script: str, argv: list, world: int = 2, fail_rank: int = -1,
           failure: type = RuntimeError) -> dict:
    """Run `script` in `world` processes; returns the files each rank opened for writing."""
    written = mp.Manager().dict()
    mp.start_processes(_worker, args=(world, _free_port(), script, argv, fail_rank, written,
                                      failure), nprocs=world, start_method="spawn")
    return dict(written)


def _weights(root, family: str, *keys: str) -> dict:
    state = load_checkpoint(find_run(root, family).checkpoint)
    return {(k, name): v for k in keys for name, v in state[k].items()}, state


@pytest.mark.parametrize("script, family, args, keys", [
    ("Diffusion_run_scripts.DiffusionMain", "diffusion", DIFFUSION, ("model", "ema")),
    ("GAN_run_scripts.ganmain", "gan", GAN, ("generator", "discriminator"))])
def test_two_processes_compute_what_one_computes(tmp_path, script, family, args, keys):
    import importlib
    one, two = tmp_path / "one", tmp_path / "two"
    importlib.import_module(script).main([*args, f"--SAVE_ROOT={one}", "--EPOCHS=2"])
    written = _spawn(script, [*args, f"--SAVE_ROOT={two}", "--EPOCHS=2"])
    a, state_a = _weights(one, family, *keys)
    b, state_b = _weights(two, family, *keys)
    assert state_b["processes"] == 2 and state_a["step"] == state_b["step"] == 8
    assert state_a["images"] == state_b["images"] == 2 * 64
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
    # rank 0 alone writes, figures through atomic temporary files (.<name>.png.<pid>.<x>.tmp)
    assert written[1] == [] and any(".png" in os.path.basename(p) for p in written[0])


def test_two_process_run_resumes_exactly(tmp_path):
    """With dropout, so that each rank's own stream (its dropout masks) is restored too."""
    script = "Diffusion_run_scripts.DiffusionMain"
    args = [*DIFFUSION, "--LR_SCHEDULE=constant",  # a plan that does not depend on EPOCHS
            "--DROPOUT=0.2"]
    straight, split = f"--SAVE_ROOT={tmp_path / 'a'}", f"--SAVE_ROOT={tmp_path / 'b'}"
    _spawn(script, [*args, straight, "--EPOCHS=2"])
    _spawn(script, [*args, split, "--EPOCHS=1"])
    _spawn(script, [split, "--RESUME=latest", "--EPOCHS=2"])
    a, state_a = _weights(tmp_path / "a", "diffusion", "model", "ema")
    b, state_b = _weights(tmp_path / "b", "diffusion", "model", "ema")
    assert state_a["step"] == state_b["step"] and state_b["processes"] == 2
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(state_a["frames"], state_b["frames"])


def test_resuming_with_another_number_of_processes_says_so(tmp_path, capsys):
    import Diffusion_run_scripts.DiffusionMain as script
    args = [*DIFFUSION, f"--SAVE_ROOT={tmp_path}"]
    _spawn("Diffusion_run_scripts.DiffusionMain", [*args, "--EPOCHS=1"])
    script.main([f"--SAVE_ROOT={tmp_path}", "--RESUME=latest", "--EPOCHS=2"])
    assert "trained with 2 process(es) and continues with 1" in capsys.readouterr().out
    state = load_checkpoint(find_run(tmp_path, "diffusion").checkpoint)
    assert (state["epoch"], state["processes"], state["images"]) == (2, 1, 2 * 64)


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failing_or_interrupted_rank_stops_the_other_within_seconds(tmp_path, failure):
    """Whichever exits first is reported: the failing rank (an error, or Ctrl-C: exit status
    130), or the other one whose collective lost its peer (gloo: connection reset or closed).
    The checkpoint of the last finished epoch (4 steps each) is kept."""
    started = time.monotonic()
    with pytest.raises(Exception, match="this rank fails|Connection reset|Connection closed|"
                                        "exit code 130"):
        _spawn("Diffusion_run_scripts.DiffusionMain",
               [*DIFFUSION, f"--SAVE_ROOT={tmp_path}", "--EPOCHS=50"], fail_rank=1,
               failure=failure)
    assert time.monotonic() - started < 60
    assert load_checkpoint(find_run(tmp_path, "diffusion").checkpoint)["epoch"] == 1


def test_a_global_batch_that_does_not_divide_is_refused(tmp_path):
    with pytest.raises(mp.ProcessExitedException) as failed:
        _spawn("GAN_run_scripts.ganmain", [*GAN, f"--SAVE_ROOT={tmp_path}",
                                           "--BATCH_SIZE=15"])
    assert failed.value.exit_code == 2  # the one-line UserError of run_cli
    assert not (tmp_path / "saved_plots").exists()


def _rng_worker(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    from utils import distributed
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(5)  # the same SEED on every rank
    cpu = torch.device("cpu")
    shared_before = torch.rand(4)
    with distributed.own_rng(cpu):
        own_first = torch.rand(4)
    shared_after = torch.rand(4)
    with distributed.own_rng(cpu):
        own_second = torch.rand(4)
    states = distributed.own_rng_states()
    distributed.set_own_rng_states(states)  # what a resume with the same world restores
    with distributed.own_rng(cpu):
        own_third = torch.rand(4)
    out[rank] = dict(shared=(shared_before, shared_after), own=(own_first, own_second, own_third))
    dist.destroy_process_group()


def test_each_rank_draws_dropout_from_its_own_stream_and_the_shared_one_is_untouched():
    """Under torchrun, own_rng gives every rank different draws (dropout masks were the same on
    every rank), the shared stream continues as if nothing had been drawn, and a rank's own
    stream continues from its saved state; without a process group it is a no-op."""
    from utils import distributed
    out = mp.Manager().dict()
    mp.start_processes(_rng_worker, args=(2, _free_port(), out), nprocs=2, start_method="spawn")
    torch.manual_seed(5)
    expected_shared = (torch.rand(4), torch.rand(4))  # one process, nothing drawn in between
    for rank in (0, 1):
        assert all(torch.equal(a, b) for a, b in zip(out[rank]["shared"], expected_shared))
    first0, second0, third0 = out[0]["own"]
    first1, second1, third1 = out[1]["own"]
    assert not torch.equal(first0, first1) and not torch.equal(second0, second1)
    assert not torch.equal(first0, second0)  # the own stream moves on
    assert not torch.equal(third0, second0) and not torch.equal(third0, first0)
    torch.manual_seed(5)
    with distributed.own_rng(torch.device("cpu")):  # one process: the shared stream itself
        alone = torch.rand(4)
    assert torch.equal(alone, expected_shared[0])


def test_the_collective_timeout_comes_from_the_environment(monkeypatch):
    import datetime

    from utils.distributed import collective_timeout
    from utils.errors import UserError
    monkeypatch.delenv("DDP_TIMEOUT_MINUTES", raising=False)
    assert collective_timeout() == datetime.timedelta(minutes=10)
    monkeypatch.setenv("DDP_TIMEOUT_MINUTES", "1.5")
    assert collective_timeout() == datetime.timedelta(seconds=90)
    for bad in ("0", "-2", "nan", "soon"):
        monkeypatch.setenv("DDP_TIMEOUT_MINUTES", bad)
        with pytest.raises(UserError, match="DDP_TIMEOUT_MINUTES"):
            collective_timeout()

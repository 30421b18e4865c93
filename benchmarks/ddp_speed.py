"""Data-parallel speed of the pixel diffusion loop on this machine: one process with all the
threads against torchrun processes with one thread each, the same global batch.

    python -m benchmarks.ddp_speed
    python -m benchmarks.ddp_speed --PROCESSES=2 --EPOCHS=3 --N_TRAIN=4096

Each configuration is a real DiffusionMain run (its own defaults, fp32 or bf16 as PRECISION
picks) in a child process, in a temporary SAVE_ROOT; the number is the loop's training img/s
from metrics.jsonl (the first epoch, which includes warm-up, is left out when there are more).
Run it on an idle machine: two CPU-heavy processes slow each other down about 3x.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from utils.config import check_positive, resolve_constants
from utils.cli import run_cli
from utils.errors import UserError

PROCESSES = 2  # torchrun processes of the data-parallel configuration (1 thread each)
THREADS = 2  # threads of the single-process configuration
EPOCHS = 2  # epochs per configuration
N_TRAIN = 2048  # training images (shapes, 32x32)
BATCH_SIZE = 64  # the global batch of both configurations
PRECISION = "auto"  # auto, bf16, fp32


def run(command: list[str], threads: int, root: Path) -> float:
    """Training img/s of one DiffusionMain run (mean over the epochs after the first)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{' '.join(command[:4])} failed: {done.stderr.strip()[-300:]}")
    log = next(root.glob("saved_plots/diffusion/*/metrics.jsonl"))
    speeds = [json.loads(line)["img_per_s"] for line in log.read_text().splitlines()]
    return sum(speeds[1:] or speeds) / len(speeds[1:] or speeds)


def main(argv=None) -> dict:
    const = resolve_constants(globals(), argv)
    check_positive(const, "PROCESSES", "THREADS", "EPOCHS", "N_TRAIN", "BATCH_SIZE")
    args = ["-m", "Diffusion_run_scripts.DiffusionMain", f"--EPOCHS={const.EPOCHS}",
            f"--N_TRAIN={const.N_TRAIN}", f"--BATCH_SIZE={const.BATCH_SIZE}",
            f"--PRECISION={const.PRECISION}", "--DEVICE=cpu", "--SAMPLE_STEPS=2"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        results[f"1 process x {const.THREADS} threads"] = run(
            [sys.executable, *args, f"--SAVE_ROOT={one}"], const.THREADS, one)
        results[f"{const.PROCESSES} processes x 1 thread"] = run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc_per_node={const.PROCESSES}", *args, f"--SAVE_ROOT={many}"], 1, many)
    print(f"pixel diffusion loop (DiffusionMain defaults), global batch {const.BATCH_SIZE}, "
          f"{const.N_TRAIN} shapes images, PRECISION={const.PRECISION}, torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs")
    for name, speed in results.items():
        print(f"  {name:>24s}: {speed:7.1f} img/s")
    return results


if __name__ == "__main__":
    run_cli(main)

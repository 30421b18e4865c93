"""DCGAN training speed on this machine: fp32 vs bf16, contiguous vs channels_last.

    python -m benchmarks.gan_speed [--BATCH_SIZE=128 --STEPS=20]

Prints images/second per configuration, which one PRECISION="auto" picks here, and the share of
a training step spent producing the batch (indexing the uint8 tensor + normalising).
Run it on an idle machine: two CPU-heavy processes slow each other down about 3x.
"""
import time

import torch

from train.gan import build_gan, gan_step
from utils.config import resolve_constants
from utils.data import iterate_batches, load_dataset
from utils.device import resolve_device, resolve_precision, synchronize

BATCH_SIZE = 128  # images per step
IMAGE_SIZE = 32  # pixels
STEPS = 20  # timed steps per configuration (after 3 warm-up steps)
DEVICE = "auto"  # auto, cpu, cuda


def step_speed(device, amp_dtype, channels_last, batch, steps) -> float:
    torch.manual_seed(0)
    s = build_gan(100, batch.shape[-1], 3, 64, 2e-4, (0.5, 0.999), device, amp_dtype,
                  channels_last)
    for _ in range(3):
        gan_step(s, batch)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        gan_step(s, batch)
    synchronize(device)
    return steps * len(batch) / (time.perf_counter() - started)


def main(argv=None) -> None:
    const = resolve_constants(globals(), argv)
    device = resolve_device(const.DEVICE)
    data = load_dataset("shapes", image_size=const.IMAGE_SIZE, n=20 * const.BATCH_SIZE).to(device)
    batch, _ = next(iterate_batches(data, const.BATCH_SIZE, device))
    print(f"DCGAN-{const.IMAGE_SIZE}, batch {const.BATCH_SIZE}, {device}, "
          f"{torch.get_num_threads()} threads")
    speeds = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for layout in (False, True):
            speed = step_speed(device, dtype, layout, batch, const.STEPS)
            speeds[(name, layout)] = speed
            print(f"  {name:4s} {'channels_last' if layout else 'contiguous   '}  "
                  f"{speed:7.1f} img/s")
    auto = "bf16" if resolve_precision("auto", device) else "fp32"
    print(f"PRECISION='auto' picks {auto} here; with CHANNELS_LAST=True: "
          f"{speeds[(auto, True)]:.1f} img/s")
    started = time.perf_counter()
    n = sum(len(x) for x, _ in iterate_batches(data, const.BATCH_SIZE, device))
    synchronize(device)
    data_rate = n / (time.perf_counter() - started)
    share = speeds[(auto, True)] / data_rate
    print(f"data: {data_rate:,.0f} img/s on its own, {100 * share:.2f}% of a training step")


if __name__ == "__main__":
    main()

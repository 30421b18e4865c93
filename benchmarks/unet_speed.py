"""UNet (pixel DDPM) speed on this machine: training img/s and sampling ms/img, fp32 vs bf16,
and the achieved GFLOP/s against the measured matmul peak.

    python -m benchmarks.unet_speed
    python -m benchmarks.unet_speed --BASE=64 --BLOCKS=2 --BATCH_SIZE=64

The UNet defaults are those of Diffusion_run_scripts.DiffusionMain. FLOPs of one training step
(forward + backward) are counted with torch.utils.flop_counter; the matmul peak is a large square
matmul in the same dtype. Run it on an idle machine: two CPU-heavy processes slow each other
down about 3x.
"""
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from Diffusion_run_scripts import DiffusionMain as defaults
from models.diffusion import NoiseSchedule
from train.diffusion_step import build_diffusion, diffusion_step, ema_samples
from utils.config import resolve_constants
from utils.device import resolve_device, resolve_precision, synchronize

IMAGE_SIZE = defaults.IMAGE_SIZE  # pixels
BASE = defaults.BASE  # UNet channels at full resolution
CHANNEL_MULT = defaults.CHANNEL_MULT  # channel multiplier per level
BLOCKS = defaults.BLOCKS  # residual blocks per level
ATTENTION = defaults.ATTENTION  # resolutions with self-attention
BATCH_SIZE = defaults.BATCH_SIZE  # images per training step
STEPS = 10  # timed training steps per precision (after 2 warm-up steps)
SAMPLE_BATCH = 16  # images per sampling call
SAMPLE_STEPS = 20  # DDIM steps timed (ms/img is reported per full DDIM-SAMPLE_STEPS sample)
MATMUL_SIZE = 2048  # n of the n x n matmul that measures the peak
DEVICE = "auto"  # auto, cpu, cuda


def _timed(fn, repeats: int, device) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def matmul_peak(n: int, dtype, device) -> float:
    """GFLOP/s of an n x n matmul (2 n^3 FLOPs) in `dtype`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / _timed(lambda: a @ b, 5, device) / 1e9


def build(const, device, amp_dtype):
    torch.manual_seed(0)
    args = {"unet": dict(in_channels=3, image_size=const.IMAGE_SIZE, base=const.BASE,
                         channel_mult=tuple(const.CHANNEL_MULT), blocks=const.BLOCKS,
                         attention_resolutions=tuple(const.ATTENTION))}
    return build_diffusion(args, NoiseSchedule("cosine"), device, lr=2e-4, warmup_steps=1,
                           total_steps=100, amp_dtype=amp_dtype)


def step_flops(s, batch) -> int:
    with FlopCounterMode(display=False) as counter:
        diffusion_step(s, batch)
    return counter.get_total_flops()


def main(argv=None) -> None:
    const = resolve_constants(globals(), argv)
    device = resolve_device(const.DEVICE)
    batch = torch.rand(const.BATCH_SIZE, 3, const.IMAGE_SIZE, const.IMAGE_SIZE,
                       device=device) * 2 - 1
    params = sum(p.numel() for p in build(const, device, None).model.parameters())
    print(f"UNet {params / 1e6:.2f}M params, base {const.BASE}, mult {tuple(const.CHANNEL_MULT)}, "
          f"{const.BLOCKS} blocks, attention at {tuple(const.ATTENTION)}; "
          f"{const.IMAGE_SIZE}x{const.IMAGE_SIZE}, "
          f"batch {const.BATCH_SIZE}, {device}, {torch.get_num_threads()} threads")
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        s = build(const, device, dtype)
        flops = step_flops(s, batch)
        seconds = _timed(lambda: diffusion_step(s, batch), const.STEPS, device)
        noise = torch.randn(const.SAMPLE_BATCH, 3, const.IMAGE_SIZE, const.IMAGE_SIZE,
                            device=device)
        sample_s = _timed(lambda: ema_samples(s, noise, "ddim", const.SAMPLE_STEPS), 1, device)
        peak = matmul_peak(const.MATMUL_SIZE, dtype or torch.float32, device)
        achieved = flops / seconds / 1e9
        print(f"  {name}: train {const.BATCH_SIZE / seconds:6.1f} img/s "
              f"({flops / const.BATCH_SIZE / 1e9:.2f} GFLOP/img, {achieved:6.1f} GFLOP/s = "
              f"{100 * achieved / peak:4.1f}% of the {peak:6.1f} GFLOP/s {name} matmul peak); "
              f"DDIM-{const.SAMPLE_STEPS} sampling "
              f"{1000 * sample_s / const.SAMPLE_BATCH:6.1f} ms/img")
    auto = "bf16" if resolve_precision("auto", device) else "fp32"
    print(f"PRECISION='auto' picks {auto} here")


if __name__ == "__main__":
    main()

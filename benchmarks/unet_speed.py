"""UNet (pixel DDPM) speed on this machine: training img/s and sampling ms/img, fp32 vs bf16,
the achieved GFLOP/s against the measured matmul and 3x3-convolution peaks, and, when the
diffusers package is installed (a benchmark-only extra), its UNet2DModel of the same shape
trained the same way in the same process, with the ratio of the two GFLOP/s.

    python -m benchmarks.unet_speed
    python -m benchmarks.unet_speed --BASE=64 --CHANNEL_MULT="(1, 2, 2)" --BLOCKS=2 \
        --ATTENTION="(16,)" --BATCH_SIZE=64

The UNet defaults are those of Diffusion_run_scripts.DiffusionMain. FLOPs of one training step
(forward + backward) are counted with torch.utils.flop_counter; the matmul peak is a large square
matmul in the same dtype, the conv peak a 3x3 convolution at the UNet's widest level. Run it on
an idle machine: two CPU-heavy processes slow each other down about 3x.
"""
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from Diffusion_run_scripts import DiffusionMain as defaults
from models.diffusion import NoiseSchedule
from train.diffusion_step import build_diffusion, diffusion_step, ema_samples
from utils.config import resolve_constants
from utils.cli import run_cli
from utils.device import autocast, resolve_device, resolve_precision, synchronize

IMAGE_SIZE = defaults.IMAGE_SIZE  # pixels
BASE = defaults.BASE  # UNet channels at full resolution
CHANNEL_MULT = defaults.CHANNEL_MULT  # channel multiplier per level
BLOCKS = defaults.BLOCKS  # residual blocks per level
ATTENTION = defaults.ATTENTION  # resolutions with self-attention
HEADS = defaults.HEADS  # attention heads
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


def conv_peak(channels: int, size: int, batch: int, dtype, device) -> float:
    """GFLOP/s of a 3x3 convolution, channels -> channels at size x size (2 * 9 C^2 HW B)."""
    x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(device, dtype)
    with torch.no_grad():
        seconds = _timed(lambda: conv(x), 5, device)
    return 2 * 9 * channels ** 2 * size ** 2 * batch / seconds / 1e9


def diffusers_step(const, device, amp_dtype):
    """A training step of diffusers' UNet2DModel of the same shape (forward, MSE, backward,
    AdamW), or None when diffusers is not installed."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    sizes = [const.IMAGE_SIZE // 2 ** i for i in range(len(const.CHANNEL_MULT))]
    attention = [size in tuple(const.ATTENTION) for size in sizes]
    widths = tuple(const.BASE * m for m in const.CHANNEL_MULT)
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=const.IMAGE_SIZE, in_channels=3, out_channels=3, block_out_channels=widths,
        layers_per_block=const.BLOCKS, attention_head_dim=max(widths) // const.HEADS,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in attention[::-1]),
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), 2e-4)
    x = torch.randn(const.BATCH_SIZE, 3, const.IMAGE_SIZE, const.IMAGE_SIZE, device=device)
    t = torch.randint(0, 1000, (const.BATCH_SIZE,), device=device)

    def step():
        with autocast(device, amp_dtype):
            out = model(x, t).sample
        loss = torch.nn.functional.mse_loss(out.float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def measure(step, const, device) -> tuple[float, float]:
    """(FLOPs of one step, seconds per step)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops(), _timed(step, const.STEPS, device)


def build(const, device, amp_dtype):
    torch.manual_seed(0)
    args = {"unet": dict(in_channels=3, image_size=const.IMAGE_SIZE, base=const.BASE,
                         channel_mult=tuple(const.CHANNEL_MULT), blocks=const.BLOCKS,
                         attention_resolutions=tuple(const.ATTENTION), heads=const.HEADS,
                         dropout=0.0)}
    return build_diffusion(args, NoiseSchedule("cosine"), device, prediction_type="epsilon",
                           lr=2e-4, warmup_steps=1,
                           total_steps=100, amp_dtype=amp_dtype)


def main(argv=None) -> dict:
    const = resolve_constants(globals(), argv)
    device = resolve_device(const.DEVICE)
    batch = torch.rand(const.BATCH_SIZE, 3, const.IMAGE_SIZE, const.IMAGE_SIZE,
                       device=device) * 2 - 1
    params = sum(p.numel() for p in build(const, device, None).model.parameters())
    print(f"UNet {params / 1e6:.2f}M params, base {const.BASE}, mult {tuple(const.CHANNEL_MULT)}, "
          f"{const.BLOCKS} blocks, attention at {tuple(const.ATTENTION)}; "
          f"{const.IMAGE_SIZE}x{const.IMAGE_SIZE}, batch {const.BATCH_SIZE}, {device}, "
          f"{torch.get_num_threads()} threads")
    widest = const.BASE * max(const.CHANNEL_MULT)
    size = const.IMAGE_SIZE // 2 ** (len(const.CHANNEL_MULT) - 1)
    results = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        setup = build(const, device, dtype)
        flops, seconds = measure(lambda: diffusion_step(setup, batch), const, device)
        noise = torch.randn(const.SAMPLE_BATCH, 3, const.IMAGE_SIZE, const.IMAGE_SIZE,
                            device=device)
        sample_s = _timed(lambda: ema_samples(setup, noise, "ddim", const.SAMPLE_STEPS), 1,
                          device)
        matmul = matmul_peak(const.MATMUL_SIZE, dtype or torch.float32, device)
        conv = conv_peak(widest, size, const.BATCH_SIZE, dtype or torch.float32, device)
        achieved = results[name] = flops / seconds / 1e9
        print(f"  {name}: train {const.BATCH_SIZE / seconds:6.1f} img/s "
              f"({flops / const.BATCH_SIZE / 1e9:.2f} GFLOP/img, {achieved:6.1f} GFLOP/s; "
              f"peaks: matmul {matmul:6.1f}, 3x3 conv {conv:6.1f} GFLOP/s); "
              f"DDIM-{const.SAMPLE_STEPS} sampling "
              f"{1000 * sample_s / const.SAMPLE_BATCH:6.1f} ms/img")
        peer = diffusers_step(const, device, dtype)
        if peer is not None:
            peer_flops, peer_seconds = measure(peer, const, device)
            results[f"diffusers {name}"] = peer_flops / peer_seconds / 1e9
            print(f"  {name} diffusers UNet2DModel: {const.BATCH_SIZE / peer_seconds:6.1f} "
                  f"img/s ({peer_flops / const.BATCH_SIZE / 1e9:.2f} GFLOP/img, "
                  f"{peer_flops / peer_seconds / 1e9:6.1f} GFLOP/s); ours / diffusers = "
                  f"{achieved / (peer_flops / peer_seconds / 1e9):.2f}x")
    if "diffusers fp32" not in results:
        print("  (pip install diffusers to add its UNet2DModel of the same shape as a row)")
    auto = "bf16" if resolve_precision("auto", device) else "fp32"
    print(f"PRECISION='auto' picks {auto} here")
    return results


if __name__ == "__main__":
    run_cli(main)

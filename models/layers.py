"""Blocks shared by the UNet and the LDM autoencoder: residual block, attention, resampling."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide the channel count."""
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels, eps=eps)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer position encoding of timesteps (Vaswani et al. 2017; Ho et al. 2020): (B,) ->
    (B, dim), cosines then sines at geometrically spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual path; optional conditioning on an embedding,
    by scale and shift after the second norm (out = norm(h) * (1 + scale) + shift, Dhariwal &
    Nichol 2021) or, with emb_mode "add", added before it (h + W silu(emb), Ho et al. 2020 and
    Stable Diffusion). `eps` is the GroupNorms' (Stable Diffusion's VAE uses 1e-6)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int = 0, dropout: float = 0.0,
                 emb_mode: str = "scale_shift", eps: float = 1e-5):
        super().__init__()
        if emb_mode not in ("scale_shift", "add"):
            raise ValueError(f"emb_mode must be scale_shift or add, got {emb_mode!r}")
        self.norm1, self.conv1 = group_norm(c_in, eps), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb_mode = emb_mode
        width = 2 * c_out if emb_mode == "scale_shift" else c_out
        self.emb = nn.Linear(emb_dim, width) if emb_dim else None
        self.norm2, self.dropout = group_norm(c_out, eps), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        conditioned = self.emb is not None and emb is not None
        if conditioned and self.emb_mode == "add":
            h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.norm2(h)
        if conditioned and self.emb_mode == "scale_shift":
            scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, through
    F.scaled_dot_product_attention, with a residual connection."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads, self.norm = heads, group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # The 1x1 convolutions run as matmuls over the pixels (the same weights, viewed as
        # linear layers): on CPUs a 1x1 convolution's backward is much slower than a matmul's.
        # q, k, v come out (B, heads, HW, C/heads) with a unit last stride, which SDPA's fused
        # CPU kernel needs (with a strided one it takes its slower math path).
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias)
        q, k, v = qkv.view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        y = F.linear(y, self.out.weight.flatten(1), self.out.bias)
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution (or reach `size`, the skip connection's, where an odd size was
    halved on the way down): nearest-neighbour, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch when the batch is
    split over data-parallel processes (as SyncBatchNorm, which only runs on GPUs), so that N
    processes compute what one process computes on the whole batch. In one process it is
    nn.BatchNorm2d exactly (same parameters, buffers and state_dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable all-reduce
        xf = x.float()
        count = torch.full((1,), xf.numel() / xf.shape[1], device=x.device)
        moments = torch.cat([count, xf.sum(dim=(0, 2, 3)), xf.pow(2).sum(dim=(0, 2, 3))])
        moments = all_reduce(moments)  # summed over ranks, gradient flows back to every rank
        n, total, squares = moments[0], moments[1:1 + x.shape[1]], moments[1 + x.shape[1]:]
        mean = total / n
        var = (squares / n - mean.pow(2)).clamp(min=0)  # biased, as BatchNorm normalises
        with torch.no_grad():  # running statistics use the unbiased variance (Ioffe & Szegedy)
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), m)
            self.running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), m)
        shape = (1, -1, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return (y * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)

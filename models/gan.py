"""DCGAN generator and discriminator (Radford et al. 2015) and the GAN losses."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import BatchNorm2d


def _levels(image_size: int) -> int:
    """Number of stride-2 stages between 4x4 and image_size (which must be 4 * 2^k, k >= 1)."""
    k = math.log2(image_size / 4) if image_size >= 8 else 0
    if k < 1 or k != int(k):
        raise ValueError(f"DCGAN image size must be 4 * 2^k (8, 16, 32, 64, ...), got {image_size}")
    return int(k)


def dcgan_init(module: nn.Module) -> None:
    """Radford et al. 2015: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        parametrized = getattr(module, "parametrizations", None)  # spectral norm: the raw weight
        nn.init.normal_(parametrized.weight.original if parametrized else module.weight, 0.0,
                        0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


UPSAMPLING = ("transposed", "nearest")


def _upsample(c_in: int, c_out: int, kind: str) -> list[nn.Module]:
    """x2 in size: a 4x4 stride-2 transposed conv (DCGAN), or nearest-neighbour resizing then a
    3x3 conv, which spreads every input pixel evenly and so draws no checkerboard (Odena et al.
    2016, "Deconvolution and checkerboard artifacts")."""
    if kind == "transposed":
        return [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)]
    if kind == "nearest":
        return [nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)]
    raise ValueError(f"upsample must be one of {UPSAMPLING}, got {kind!r}")


class Generator(nn.Module):
    """z (B, latent_dim) -> image (B, C, S, S) in [-1, 1]: x2 upsampling (transposed convs, or
    nearest + conv), BatchNorm, ReLU."""

    def __init__(self, latent_dim: int = 100, image_size: int = 32, channels: int = 3,
                 width: int = 48, upsample: str = "transposed"):
        super().__init__()
        levels = _levels(image_size)
        self.latent_dim = latent_dim
        widths = [width * 2 ** i for i in reversed(range(levels))]  # e.g. 256, 128, 64
        layers = [nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),  # 1 -> 4
                  BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [*_upsample(c_in, c_out, upsample), BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
        layers += [*_upsample(widths[-1], channels, upsample), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """x (B, C, H, W) -> (B, C + 1, H, W): the extra channel is, for each group of group_size
    samples, the standard deviation over the group of every feature and pixel, averaged to one
    number (Karras et al. 2018, "Progressive growing of GANs", section 3). A batch of near
    copies (mode collapse) shows a small value that D can learn to punish. The group shrinks to
    the largest size <= group_size that divides B."""
    batch, _, height, width = x.shape
    group = max(g for g in range(1, min(group_size, batch) + 1) if batch % g == 0)
    grouped = x.float().reshape(group, batch // group, *x.shape[1:])  # (G, B/G, C, H, W)
    std = (grouped.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # (B/G,)
    feature = std.repeat(group)[:, None, None, None].expand(batch, 1, height, width)
    return torch.cat([x, feature.to(x.dtype)], 1)


D_NORMS = ("batch", "none")


class Discriminator(nn.Module):
    """image (B, C, S, S) -> logits (B,): strided convs, LeakyReLU 0.2, no input BatchNorm.

    norm "batch" puts BatchNorm after every strided conv but the first (Radford et al. 2015);
    "none" leaves it out, so a sample's logit does not depend on the rest of its batch.
    spectral_norm divides every convolution's weight by its largest singular value (Miyato et
    al. 2018), which makes D 1-Lipschitz per layer; BatchNorm is then left out, as in SNGAN.
    mbstd_group > 0 appends the minibatch standard deviation (minibatch_stddev) as a channel
    before the last convolution.
    """

    def __init__(self, image_size: int = 32, channels: int = 3, width: int = 24,
                 spectral_norm: bool = False, norm: str = "batch", mbstd_group: int = 0):
        super().__init__()
        if norm not in D_NORMS:
            raise ValueError(f"discriminator norm must be one of {D_NORMS}, got {norm!r}")
        levels = _levels(image_size)
        widths = [width * 2 ** i for i in range(levels)]  # e.g. 64, 128, 256
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        batch_norm = norm == "batch" and not spectral_norm
        layers = [wrap(nn.Conv2d(channels, widths[0], 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [wrap(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not batch_norm)),
                       BatchNorm2d(c_out) if batch_norm else nn.Identity(),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers += [wrap(nn.Conv2d(widths[-1] + (mbstd_group > 0), 1, 4, 1, 0))]  # 4x4 -> 1x1
        self.net = nn.Sequential(*layers)  # one Sequential: checkpoints keep their keys
        self.mbstd_group = mbstd_group
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *features, head = self.net
        for layer in features:
            x = layer(x)  # (B, widths[-1], 4, 4) at the end
        if self.mbstd_group > 0:
            x = minibatch_stddev(x, self.mbstd_group)
        return head(x).flatten()


ADVERSARIAL_LOSSES = ("bce", "hinge")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       kind: str = "bce") -> torch.Tensor:
    """bce: -log D(x) - log(1 - D(G(z))), averaged (Goodfellow et al. 2014), from logits;
    hinge: relu(1 - D(x)) + relu(1 + D(G(z))), averaged (Lim & Ye 2017; Miyato et al. 2018)."""
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    raise ValueError(f"adversarial loss must be one of {ADVERSARIAL_LOSSES}, got {kind!r}")


def generator_loss(fake_logits: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """bce: the non-saturating -log D(G(z)) (Goodfellow et al. 2014, section 3);
    hinge: -D(G(z)) (Lim & Ye 2017)."""
    fake = fake_logits.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if kind == "hinge":
        return -fake.mean()
    raise ValueError(f"adversarial loss must be one of {ADVERSARIAL_LOSSES}, got {kind!r}")


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 = E ||grad_x D(x)||^2 on real images (Mescheder et al. 2018, eq. 9, without its
    gamma / 2); `real` must require grad. Differentiable (for D's update)."""
    grad, = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()

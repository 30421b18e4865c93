"""The latent diffusion autoencoder (Rombach et al. 2022), trained as a VAE-GAN: a KL-regularised
convolutional encoder/decoder and a patch discriminator, with the loss terms of Esser et al. 2021.
"""
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm as sn

from models import gan as gan_losses
from models.layers import Attention, Downsample, ResBlock, Upsample, group_norm
from models.vae import Noise, reparameterize

LOGVAR_RANGE = (-30.0, 20.0)  # clamp on the encoder's log-variance, as in Rombach et al.'s code


class Encoder(nn.Module):
    """Image -> (mean, logvar) of a latent with `latent_channels` at 1/2^(levels-1) resolution."""

    def __init__(self, channels: int, latent_channels: int, base: int, channel_mult: tuple,
                 blocks: int, attention: bool):
        super().__init__()
        widths = [base * m for m in channel_mult]
        self.conv_in = nn.Conv2d(channels, widths[0], 3, padding=1)
        layers, c = [], widths[0]
        for level, w in enumerate(widths):
            for _ in range(blocks):
                layers.append(ResBlock(c, w))
                c = w
            if level < len(widths) - 1:
                layers.append(Downsample(c))
        self.down = nn.Sequential(*layers)
        self.mid = nn.Sequential(ResBlock(c, c), Attention(c) if attention else nn.Identity(),
                                 ResBlock(c, c))
        self.norm_out = group_norm(c)
        self.conv_out = nn.Conv2d(c, 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.mid(self.down(self.conv_in(x)))
        mean, logvar = self.conv_out(F.silu(self.norm_out(h))).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)


class Decoder(nn.Module):
    """Latent -> image, mirroring the encoder."""

    def __init__(self, channels: int, latent_channels: int, base: int, channel_mult: tuple,
                 blocks: int, attention: bool):
        super().__init__()
        widths = [base * m for m in channel_mult]
        c = widths[-1]
        self.conv_in = nn.Conv2d(latent_channels, c, 3, padding=1)
        self.mid = nn.Sequential(ResBlock(c, c), Attention(c) if attention else nn.Identity(),
                                 ResBlock(c, c))
        layers = []
        for level in reversed(range(len(widths))):
            for _ in range(blocks + 1):
                layers.append(ResBlock(c, widths[level]))
                c = widths[level]
            if level > 0:
                layers.append(Upsample(c))
        self.up = nn.Sequential(*layers)
        self.norm_out = group_norm(c)
        self.conv_out = nn.Conv2d(c, channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Autoencoder(nn.Module):
    """KL autoencoder: encode -> (mean, logvar), decode(z); f = 2^(len(channel_mult) - 1)."""

    def __init__(self, image_size: int = 32, channels: int = 3, latent_channels: int = 4,
                 base: int = 16, channel_mult: tuple = (1, 2, 4), blocks: int = 1,
                 attention: bool = True):
        super().__init__()
        self.factor = 2 ** (len(channel_mult) - 1)
        if image_size % self.factor:
            raise ValueError(f"image size {image_size} is not divisible by f={self.factor}")
        self.latent_shape = (latent_channels, image_size // self.factor,
                             image_size // self.factor)
        args = (channels, latent_channels, base, tuple(channel_mult), blocks, attention)
        self.encoder, self.decoder = Encoder(*args), Decoder(*args)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight, where the adaptive GAN weight compares gradients."""
        return self.decoder.conv_out.weight

    def forward(self, x: torch.Tensor, noise: Noise | None = None):
        """(reconstruction from a posterior sample, mean, logvar)."""
        mean, logvar = self.encode(x)
        return self.decode(reparameterize(mean, logvar, noise=noise)), mean, logvar


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): strided convs with LeakyReLU giving a map of real/fake logits,
    one per receptive-field patch; also returns the intermediate feature maps."""

    def __init__(self, channels: int = 3, width: int = 32, layers: int = 3,
                 spectral_norm: bool = False):
        super().__init__()
        wrap = sn if spectral_norm else (lambda m: m)
        blocks, c = [], channels
        for i in range(layers):
            w = width * min(2 ** i, 8)
            blocks.append(nn.Sequential(wrap(nn.Conv2d(c, w, 4, 2 if i < layers - 1 else 1, 1)),
                                        nn.LeakyReLU(0.2)))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.head = wrap(nn.Conv2d(c, 1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return self.head(x), features


# Loss terms (Esser et al. 2021; Rombach et al. 2022)

def reconstruction_term(x: torch.Tensor, x_hat: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (l1) or squared (mse) error per pixel."""
    if kind == "l1":
        return (x - x_hat).abs().mean()
    if kind == "mse":
        return (x - x_hat).pow(2).mean()
    raise ValueError(f"reconstruction loss must be 'l1' or 'mse', got {kind!r}")


def kl_term(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over the latent grid, averaged over the batch."""
    from models.vae import gaussian_kl
    return gaussian_kl(mean.float(), logvar.float()).flatten(1).sum(1).mean()


def generator_adversarial(fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """The autoencoder's adversarial term: -E[D(x_hat)] (hinge) or -log sigmoid(D) (bce)."""
    return gan_losses.generator_loss(fake_logits, kind)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       kind: str = "hinge") -> torch.Tensor:
    """Half the GAN's discriminator loss, as in Esser et al. 2021's code: hinge
    1/2 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]), or the logistic loss."""
    return 0.5 * gan_losses.discriminator_loss(real_logits, fake_logits, kind)


def feature_matching(real_features: list[torch.Tensor], fake_features: list[torch.Tensor]
                     ) -> torch.Tensor:
    """Mean over layers of the L1 distance between D's features of real and reconstructed
    images (Salimans et al. 2016; the real features are a fixed target)."""
    terms = [(r.detach().float() - f.float()).abs().mean()
             for r, f in zip(real_features, fake_features)]
    return torch.stack(terms).mean()


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor,
                        last_layer: torch.Tensor, max_weight: float = 1e4,
                        mean_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None
                        ) -> torch.Tensor:
    """lambda = ||grad_L rec|| / (||grad_L gan|| + 1e-4), clamped to [0, max_weight] and detached,
    with L the decoder's last layer (Esser et al. 2021, eq. 7). Under data parallelism the two
    gradients are first averaged over ranks (mean_over_ranks), so lambda is that of the global
    batch's losses and the same on every rank."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    if mean_over_ranks is not None:
        rec_grad, gan_grad = mean_over_ranks(torch.stack([rec_grad, gan_grad]))
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()

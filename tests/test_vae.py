import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from models.vae import (VAE, AdaptiveBetaScheduler, active_dims, elbo_loss, gaussian_kl,
                        reparameterize)
from utils.metrics import (discretize, entropy, mutual_information, mutual_information_gap,
                           polar_pair)


def hand_schedule(losses, beta_init, gamma, eta, warmup, beta_min=1e-8, beta_max=10.0, eps=1e-8):
    """The issue's formulas, written out again step by step."""
    beta, rho, out = beta_init, 1.0, []
    for t, (kl, rec) in enumerate(losses):
        if t >= max(1, warmup):
            kl_prev, rec_prev = losses[t - 1]
            d_kl = 1 + (kl - kl_prev) / (kl_prev + eps)
            d_rec = 1 + (rec - rec_prev) / (rec_prev + eps)
            rho = gamma * rho + (1 - gamma) * (d_kl / (d_rec + eps))
            beta = min(max(beta * rho ** eta, beta_min), beta_max)
        out.append(beta)
    return out


LOSSES = [(30.0, 200.0), (25.0, 150.0), (28.0, 120.0), (31.0, 118.0), (29.0, 119.0),
          (35.0, 110.0), (36.0, 111.0), (30.0, 100.0)]


@pytest.mark.parametrize("warmup,gamma,eta", [(0, 0.1, 1.0), (1, 0.5, 2.0), (3, 0.1, 1.0),
                                              (5, 0.9, 0.5)])
def test_scheduler_matches_the_formulas(warmup, gamma, eta):
    sched = AdaptiveBetaScheduler(beta_init=2.0, gamma=gamma, eta=eta, warmup=warmup)
    got = [sched.update(kl, rec) for kl, rec in LOSSES]
    assert got == pytest.approx(hand_schedule(LOSSES, 2.0, gamma, eta, warmup), rel=1e-12)
    assert got[:max(1, warmup)] == [2.0] * max(1, warmup)
    assert sched.beta == got[-1]


def test_scheduler_first_update_by_hand():
    """warmup 1: call 2 with KL 30 -> 36 (+20%) and rec 200 -> 180 (-10%):
    r = 1.2 / 0.9, rho = 0.1 + 0.9 r = 1.3, beta = 1.3."""
    sched = AdaptiveBetaScheduler(beta_init=1.0, gamma=0.1, eta=1.0, warmup=1)
    assert sched.update(30.0, 200.0) == 1.0
    assert sched.update(36.0, 180.0) == pytest.approx(1.3, rel=1e-7)


def test_scheduler_bounds_and_ratio_clip():
    sched = AdaptiveBetaScheduler(beta_init=1.0, gamma=0.0, warmup=1, beta_max=10.0)
    sched.update(1.0, 100.0)
    assert sched.update(1e9, 100.0) == 10.0  # r clipped to 1e3, beta clipped to beta_max
    assert sched.rho == pytest.approx(1e3)
    low = AdaptiveBetaScheduler(beta_init=1.0, gamma=0.0, warmup=1, beta_min=0.5)
    low.update(100.0, 1.0)
    assert low.update(1e-12, 1.0) == 0.5
    assert low.rho == pytest.approx(1e-3)


def test_scheduler_state_round_trip_continues_identically():
    a = AdaptiveBetaScheduler(warmup=2)
    for kl, rec in LOSSES[:4]:
        a.update(kl, rec)
    b = AdaptiveBetaScheduler(warmup=2)
    b.load_state_dict(a.state_dict())
    assert [a.update(*x) for x in LOSSES[4:]] == [b.update(*x) for x in LOSSES[4:]]


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    assert torch.allclose(gaussian_kl(mu, logvar), expected, atol=1e-12)
    assert torch.equal(gaussian_kl(torch.zeros(3), torch.zeros(3)), torch.zeros(3))


def test_elbo_terms_and_reparameterisation():
    torch.manual_seed(0)
    x, x_hat = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    out = elbo_loss(x, x_hat, mu, logvar, beta=4.0)
    recon = ((x - x_hat) ** 2).sum() / 4
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum() / 4
    assert out["recon"].item() == pytest.approx(recon.item(), rel=1e-5)
    assert out["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(recon.item() + 4 * kl.item(), rel=1e-5)
    assert out["kl_dims"].sum().item() == pytest.approx(out["kl"].item(), rel=1e-6)
    z = reparameterize(torch.full((200000, 1), 2.0), torch.full((200000, 1), math.log(0.25)))
    assert z.mean().item() == pytest.approx(2.0, abs=4 * 0.5 / math.sqrt(200000))
    assert z.std().item() == pytest.approx(0.5, rel=0.01)


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_vae_shapes(size):
    model = VAE(size, channels=3, latent_dim=5, width=8)
    x_hat, mu, logvar, z = model(torch.randn(2, 3, size, size))
    assert x_hat.shape == (2, 3, size, size) and mu.shape == logvar.shape == (2, 5)
    with pytest.raises(ValueError):
        VAE(24)


def test_active_dims_threshold():
    torch.manual_seed(0)
    mu = torch.cat([torch.randn(5000, 2), 0.05 * torch.randn(5000, 3)], dim=1)
    assert active_dims(mu).tolist() == [True, True, False, False, False]


def test_entropy_and_mutual_information_closed_forms():
    a = np.repeat(np.arange(4), 252)
    assert entropy(a) == pytest.approx(math.log(4))
    assert mutual_information(a, a) == pytest.approx(math.log(4))
    assert mutual_information(a, a // 2) == pytest.approx(math.log(2))
    b = np.tile(np.arange(4), 252)  # each value of a meets each value of b equally often
    assert mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)
    codes = discretize(np.array([[0.0, 0.0], [1.0, 0.5], [2.0, 10.0]]), bins=2)
    assert codes[:, 0].tolist() == [0, 1, 1] and codes[:, 1].tolist() == [0, 0, 1]  # edge 1.0: up


def test_mig_on_constructed_latents():
    rng = np.random.default_rng(0)
    factors = rng.uniform(size=(10000, 4))
    perfect = mutual_information_gap(factors[:, [2, 0, 3, 1]], factors, list("abcd"))
    assert perfect["mig"] > 0.95
    assert [f["best_latent"] for f in perfect["factors"]] == [1, 3, 0, 2]
    rotation, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    rotated = mutual_information_gap(factors @ rotation, factors)["mig"]
    noise = mutual_information_gap(rng.normal(size=(10000, 4)), factors)["mig"]
    assert rotated < 0.5 * perfect["mig"]
    assert noise < 0.02
    constant = np.concatenate([factors, np.zeros((10000, 1))], axis=1)
    assert len(mutual_information_gap(factors, constant)["factors"]) == 4  # no entropy: skipped


@pytest.mark.parametrize("sign,offset", [(1, 0.3), (-1, 2.0)])
def test_polar_pair_finds_the_angle_that_carries_a_circular_factor(sign, offset):
    """Hue as the angle of (z1, z3) around (3, -1) (either way round, any turn), next to a
    linear factor and noise: the pair, its centre, orientation and offset come back, its angle
    carries hue better than any single latent, and a pair of unrelated latents has no
    resultant."""
    rng = np.random.default_rng(0)
    n = 5000
    hue, size, x = rng.uniform(size=n), rng.uniform(size=n), rng.uniform(size=n)
    radius, angle = 0.5 + size, sign * 2 * np.pi * hue + offset
    latents = np.stack([x, radius * np.cos(angle) + 3, rng.normal(size=n),
                        radius * np.sin(angle) - 1], 1)
    polar = polar_pair(latents, hue, [0, 1, 2, 3])
    assert polar["pair"] == [1, 3] and polar["sign"] == sign
    assert polar["resultant"] > 0.99 and np.allclose(polar["centre"], [3, -1], atol=0.01)
    assert abs(np.angle(np.exp(1j * (polar["offset"] - offset)))) < 0.02
    single = mutual_information_gap(latents, hue[:, None])["factors"][0]["normalized_mi"]
    assert polar["normalized_mi"] > 0.9 > max(single)
    assert np.corrcoef(polar["radius"], size)[0, 1] > 0.99
    assert polar_pair(latents, hue, [0, 2])["resultant"] < 0.05
    assert polar_pair(latents, hue, [1]) is None


def test_sap_on_constructed_latents():
    """Perfect and permuted latents score near 1, a duplicated latent (two equally good
    predictors) and noise near 0; a categorical factor is scored by eta^2."""
    from utils.metrics import sap_score
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(0, 4, 5000), rng.uniform(size=5000),
                        rng.uniform(size=5000)], 1).astype(float)
    perfect = np.stack([3 * factors[:, 0] - 1, -2 * factors[:, 1], factors[:, 2]], 1)
    assert sap_score(perfect, factors)["sap"] > 0.99
    permuted = sap_score(perfect[:, [2, 0, 1]], factors, ["shape", "a", "b"])
    assert permuted["sap"] > 0.99
    assert [f["best_latent"] for f in permuted["factors"]] == [1, 2, 0]
    assert sap_score(np.concatenate([perfect, perfect], 1), factors)["sap"] < 1e-9
    assert sap_score(rng.normal(size=(5000, 6)), factors)["sap"] < 0.01
    half = perfect.copy()
    half[:, 0] = np.where(factors[:, 0] < 2, 0.0, 1.0)  # explains the class means half-way
    codes = factors[:, 0]
    eta2 = np.var([half[codes == c, 0].mean() for c in range(4)]) / half[:, 0].var()
    assert sap_score(half, factors)["scores"][0][0] == pytest.approx(eta2, rel=0.05)


def test_dci_from_an_importance_matrix_matches_its_definition():
    """One latent per factor: D = C = 1; every latent used for every factor alike: D = C = 0;
    two latents sharing a factor: D stays 1 (each is about one factor), that factor's C is
    1 - log 2 / log D; an unused latent changes nothing (rho weights it 0)."""
    from utils.metrics import dci_from_importance
    one_each = dci_from_importance(np.eye(3))
    assert one_each["disentanglement"] == pytest.approx(1.0)
    assert one_each["completeness"] == pytest.approx(1.0)
    uniform = dci_from_importance(np.ones((3, 3)))
    assert uniform["disentanglement"] == pytest.approx(0.0, abs=1e-12)
    assert uniform["completeness"] == pytest.approx(0.0, abs=1e-12)
    shared = dci_from_importance(np.array([[0.5, 0, 0], [0.5, 0, 0], [0, 1, 0], [0, 0, 1]]))
    assert shared["disentanglement"] == pytest.approx(1.0)
    assert shared["factor_completeness"][0] == pytest.approx(1 - math.log(2) / math.log(4))
    assert shared["factor_completeness"][1:] == pytest.approx([1.0, 1.0])
    rows = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    p = rows / rows.sum(1, keepdims=True)
    d_i = 1 + (p * np.log(p)).sum(1) / math.log(3)
    rho = rows.sum(1) / rows.sum()
    padded = np.concatenate([rows, np.zeros((1, 3))])  # an unused latent
    assert dci_from_importance(padded)["disentanglement"] == pytest.approx((rho * d_i).sum())


def test_dci_on_constructed_latents():
    """The random-forest DCI: perfect (permuted, rescaled) latents score near 1 and predict
    every factor; duplicated latents keep D but halve each factor's importance (C near
    1 - log 2 / log 6); a rotation mixes the factors (low D, C); noise predicts nothing."""
    from utils.metrics import dci_score
    rng = np.random.default_rng(0)
    n = 2000
    factors = np.stack([rng.integers(0, 3, n), rng.uniform(size=n), rng.uniform(size=n)],
                       1).astype(float)
    perfect = np.stack([factors[:, 2], 5 * factors[:, 0], -factors[:, 1]], 1)
    scores = dci_score(perfect, factors, ["shape", "x", "y"])
    assert scores["disentanglement"] > 0.9 and scores["completeness"] > 0.9
    assert scores["informativeness"] > 0.99
    assert [f["best_latent"] for f in scores["factors"]] == [1, 2, 0]
    duplicated = dci_score(np.concatenate([perfect, perfect], 1), factors)
    assert duplicated["disentanglement"] > 0.9
    assert abs(duplicated["completeness"] - (1 - math.log(2) / math.log(6))) < 0.1
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    standard = (factors - factors.mean(0)) / factors.std(0)
    rotated = dci_score(standard @ rotation, factors)
    assert rotated["disentanglement"] < 0.5 and rotated["completeness"] < 0.5
    noise = dci_score(rng.normal(size=(n, 6)), factors)
    assert noise["informativeness"] < 0.4  # chance accuracy for 3 classes, R^2 <= 0
    assert noise["disentanglement"] < 0.2


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8])
def test_total_correlation_matches_the_gaussian_closed_form(rho):
    """Posteriors N(mu_n, s^2 I) with mu_n ~ N(0, C): q(z) is close to N(0, C + s^2 I), whose
    TC is (sum log diag S - log det S) / 2. With the batch the whole data set the estimate is
    that mixture's own; a batch of 256 stays close."""
    from models.vae import total_correlation
    torch.manual_seed(0)
    n, s = 3000, 0.3
    cov = torch.tensor([[1, rho, 0], [rho, 1, 0], [0, 0, 1.0]], dtype=torch.float64)
    mu = torch.randn(n, 3, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    logvar = torch.full_like(mu, 2 * math.log(s))
    z = mu + s * torch.randn_like(mu)
    total = cov + s * s * torch.eye(3, dtype=torch.float64)
    exact = 0.5 * (torch.log(torch.diag(total)).sum() - torch.logdet(total)).item()
    assert total_correlation(z, mu, logvar, n).item() == pytest.approx(exact, abs=0.06)
    batches = [total_correlation(z[i:i + 256], mu[i:i + 256], logvar[i:i + 256], n).item()
               for i in range(0, 2560, 256)]
    assert np.mean(batches) == pytest.approx(exact, abs=0.15)


def test_a_circular_factor_coded_in_polar_form_costs_no_total_correlation():
    """Why no TC penalty separates hue from size on `shapes`: hue is a circle, and the code
    (r cos 2 pi h, r sin 2 pi h) with r a Rayleigh quantile of the size is exactly N(0, I_2)
    (an isotropic Gaussian's angle and radius are independent), so its TC is zero, while hue on
    a ring with size on a third latent has a dependent pair."""
    from models.vae import total_correlation
    torch.manual_seed(0)
    n, s = 3000, 0.2
    hue, size = torch.rand(n, dtype=torch.float64), torch.rand(n, dtype=torch.float64)
    radius = torch.sqrt(-2 * torch.log1p(-size))  # Rayleigh(1) inverse CDF
    angle = 2 * math.pi * hue
    polar = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)
    normal = torch.distributions.Normal(0.0, 1.0)
    ring = torch.stack([torch.cos(angle), torch.sin(angle),
                        normal.icdf(size.clamp(1e-6, 1 - 1e-6))], 1)

    def tc(mu):
        logvar = torch.full_like(mu, 2 * math.log(s))
        return total_correlation(mu + s * torch.randn_like(mu), mu, logvar, n).item()

    assert abs(tc(polar)) < 0.05  # the estimate of an exact zero at this sample size
    assert tc(ring) > 0.2


def test_objectives_reduce_to_the_beta_vae_and_hold_kl_at_the_capacity():
    from models.vae import vae_objective
    torch.manual_seed(0)
    x, x_hat = torch.randn(32, 3, 8, 8), torch.randn(32, 3, 8, 8)
    mu, logvar = torch.randn(32, 4), torch.randn(32, 4) * 0.3
    z = reparameterize(mu, logvar)
    beta = vae_objective(x, x_hat, mu, logvar, z, beta=1.0)
    tc1 = vae_objective(x, x_hat, mu, logvar, z, objective="tcvae", beta=1.0, dataset_size=1000)
    assert tc1["loss"].item() == pytest.approx(beta["loss"].item())  # beta = 1: the ELBO
    tc6 = vae_objective(x, x_hat, mu, logvar, z, objective="tcvae", beta=6.0, dataset_size=1000)
    assert tc6["loss"].item() == pytest.approx(beta["loss"].item() + 5 * tc6["tc"].item())
    cap = vae_objective(x, x_hat, mu, logvar, z, objective="capacity", capacity=2.0, gamma=10)
    assert cap["loss"].item() == pytest.approx(
        beta["recon"].item() + 10 * abs(beta["kl"].item() - 2.0))
    with pytest.raises(ValueError, match="objective"):
        vae_objective(x, x_hat, mu, logvar, z, objective="dip")


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_vae_step_logs_the_gradient_norm_and_clips_it_when_asked(clip):
    """grad_norm is the global norm before clipping; with grad_clip set, the gradients the
    optimiser used have exactly that norm, without it they are untouched."""
    from train.vae import build_vae, vae_step
    torch.manual_seed(0)
    setup = build_vae(dict(image_size=8, channels=1, latent_dim=2, width=4),
                      torch.device("cpu"), lr=1e-3, beta_mode="fixed", objective="capacity",
                      capacity_max=5.0, capacity_gamma=100.0, grad_clip=clip)
    out = vae_step(setup, torch.rand(16, 1, 8, 8) * 2 - 1, beta=1.0)
    used = torch.linalg.vector_norm(torch.stack([
        torch.linalg.vector_norm(p.grad) for p in setup.model.parameters()
        if p.grad is not None]))
    assert out["grad_norm"] > 1e-2
    expected = clip if clip else out["grad_norm"]
    assert used.item() == pytest.approx(float(expected), rel=1e-4)

"""The eval figures' building blocks, driven by the exact denoiser of a one-point data set:
if x0 is always the image `point`, the ideal eps prediction is (x_t - sqrt(a) point) / sqrt(1 - a),
so every sampler, from any start t, must land on `point`."""
import pytest
import torch

from models.diffusion import Denoiser, NoiseSchedule, q_sample
from train.diffusion_figures import (compare_samplers, forward_strip, noised_and_denoised,
                                     parse_sampler, reverse_strip, steps_from, strip_timesteps,
                                     write_sampler_comparison)
from utils.errors import UserError

SCHEDULE = NoiseSchedule("cosine", 200)
POINT = torch.linspace(-0.8, 0.8, 3 * 4 * 4, dtype=torch.float64).view(1, 3, 4, 4)


def point_eps(x_t, t, labels):
    a = SCHEDULE.alphas_cumprod[t].view(-1, 1, 1, 1)
    return (x_t - a.sqrt() * POINT) / (1 - a).sqrt()


ORACLE = Denoiser(point_eps, SCHEDULE, "epsilon", clip_x0=True)


def test_strip_timesteps_and_stride():
    assert strip_timesteps(1000, 10)[0] == 0 and strip_timesteps(1000, 10)[-1] == 999
    assert steps_from(999, 1000, 50) == 50 and steps_from(0, 1000, 50) == 1
    assert steps_from(499, 1000, 50) == 25
    assert parse_sampler("ddpm-1000") == ("ddpm", 1000)
    for bad in ("ddim", "ddim-0", "plms-10", "ddim-x"):
        with pytest.raises(UserError):
            parse_sampler(bad)


def test_forward_strip_is_q_sample_per_column():
    noise = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    x0 = POINT.expand(2, -1, -1, -1)
    strip = forward_strip(SCHEDULE, x0, [0, 100, 199], noise)
    assert strip.shape == (2, 3, 3, 4, 4)
    assert torch.equal(strip[:, 1], q_sample(SCHEDULE, x0, 100, noise))


@pytest.mark.parametrize("sampler,steps", [("ddim", 20), ("ddpm", 200), ("ddpm", 10)])
def test_denoising_a_noised_point_returns_it(sampler, steps):
    x0 = POINT.expand(2, -1, -1, -1).clone()
    rows, labels = noised_and_denoised(ORACLE, x0, [10, 120, 199], sampler=sampler,
                                       steps=steps)
    assert rows.shape == (4, 4, 3, 4, 4) and labels[:2] == ["noised #0", "denoised #0"]
    assert torch.allclose(rows[1::2], POINT.expand(2, 4, -1, -1, -1), atol=1e-6)
    assert not torch.allclose(rows[0, 3], POINT[0], atol=0.1)  # t=199 is mostly noise


def test_reverse_strip_predicts_the_point_and_sampler_comparison_agrees():
    noise = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    rows, row_labels, col_labels, final = reverse_strip(ORACLE, noise, sampler="ddim", steps=10,
                                                        columns=4)
    assert rows.shape == (4, 4, 3, 4, 4) and col_labels[0] == "t=199"
    assert row_labels == ["x_t #0", "pred x0 #0", "x_t #1", "pred x0 #1"]
    assert torch.allclose(rows[1::2], POINT.expand(2, 4, -1, -1, -1), atol=1e-6)
    assert torch.allclose(final, POINT.expand(2, -1, -1, -1), atol=1e-6)
    images, timings = compare_samplers(ORACLE, noise, ["ddpm-200", "ddim-5"])
    assert images.shape == (2, 2, 3, 4, 4)
    assert torch.allclose(images, POINT.expand(2, 2, -1, -1, -1), atol=1e-6)
    assert [t["sampler"] for t in timings] == ["ddpm-200", "ddim-5"]
    assert all(t["seconds_per_image"] > 0 for t in timings)


def test_sampler_comparison_scores_every_sampler_on_the_same_noise(tmp_path):
    """Gaussian data N(0, 0.5^2) per pixel, whose exact eps is x_t sqrt(1 - a) / (a / 4 + 1 - a):
    deterministic DDIM maps each noise image to its own sample, so the same spec twice must score
    identical images (fresh noise per spec would not), and more steps nearly the same ones."""
    def gaussian_eps(x_t, t, labels):
        a = SCHEDULE.alphas_cumprod[t].view(-1, 1, 1, 1).to(x_t.dtype)
        return x_t * (1 - a).sqrt() / (a * 0.25 + 1 - a)

    scored = []

    def score(images):
        scored.append(images)
        return {"fid": 1.0, "samples": len(images), "real_vs_real": {"fid": 0.5}}
    write_sampler_comparison(Denoiser(gaussian_eps, SCHEDULE, "epsilon"),
                             torch.randn(2, 3, 4, 4), ["ddim-20", "ddim-20", "ddim-40"],
                             tmp_path, "oracle", fid_samples=300, score=score)
    assert [len(x) for x in scored] == [300] * 3
    assert torch.equal(scored[0], scored[1]) and scored[0].float().std() > 20
    assert (scored[0].float() - scored[2].float()).abs().mean() < 2  # uint8 levels
    assert (tmp_path / "sampler_comparison.json").is_file()

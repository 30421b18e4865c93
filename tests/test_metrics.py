import numpy as np
import pytest

from utils.metrics import (feature_statistics, frechet_distance, kernel_inception_distance,
                           precision_recall)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    mu, sigma = feature_statistics(a)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    mu1, s1 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 0.5])
    mu2, s2 = np.array([1.0, -1.0, 2.0]), np.array([3.0, 2.0, 1.5])
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()  # diagonal Gaussians
    got = frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2))
    assert got == pytest.approx(expected, rel=1e-9)
    b = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 4)) + 1.0
    m2, c2 = feature_statistics(b)
    forward, backward = frechet_distance(mu, sigma, m2, c2), frechet_distance(m2, c2, mu, sigma)
    assert forward == pytest.approx(backward, rel=1e-6) and forward > 0
    singular = np.diag([1.0, 0.0, 0.0])  # rank-deficient covariances still give a finite value
    assert frechet_distance(np.zeros(3), singular, np.ones(3), singular) == pytest.approx(3.0)


def test_kid_near_zero_for_one_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8))
    mean, std = kernel_inception_distance(x, y, subsets=20, subset_size=300)
    assert abs(mean) < 3 * std + 1e-3
    shifted, shifted_std = kernel_inception_distance(x, y + 1.0, subsets=20, subset_size=300)
    assert shifted > 10 * max(shifted_std, abs(mean))


def test_precision_recall_identical_and_disjoint():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 5))
    assert precision_recall(x, x) == (1.0, 1.0)
    far = precision_recall(x, x + 100.0)
    assert far == (0.0, 0.0)
    narrow = precision_recall(x, 0.1 * rng.normal(size=(300, 5)))  # all fakes near the mode
    assert narrow[0] > 0.9 and narrow[1] < 0.5


def test_pixel_hues_invert_the_shapes_colours_and_skip_greys():
    import torch

    from utils.metrics import pixel_hues
    from utils.shapes import _hsv_to_rgb
    hues = torch.linspace(0, 0.99, 100)
    rgb = _hsv_to_rgb(hues) * 2 - 1  # (100, 3) in [-1, 1]: one coloured pixel per image
    images = rgb[:, :, None, None].numpy()
    np.testing.assert_allclose(pixel_hues(images), hues.numpy(), atol=1e-6)
    corners = np.array([[1, -1, -1], [1, 1, -1], [-1, 1, -1], [-1, 1, 1], [-1, -1, 1],
                        [1, -1, 1]], dtype=float)[:, :, None, None]  # red, yellow, ... magenta
    np.testing.assert_allclose(pixel_hues(corners), np.arange(6) / 6, atol=1e-12)
    greys = np.linspace(-1, 1, 5)[:, None, None, None].repeat(3, 1)  # black to white
    dark = np.array([[-0.7, -1, -1]])[:, :, None, None]  # saturated but too dark to see
    assert len(pixel_hues(np.concatenate([greys, dark]))) == 0


def test_class_balance_shares_distance_and_confidence():
    from utils.metrics import class_balance
    real = np.eye(4)[np.arange(8) % 4]  # two of each class, each surely
    same = class_balance(real, real, ["a", "b", "c", "d"])
    assert same["fake"] == same["real"] == [0.25] * 4
    assert same["total_variation"] == 0 and same["confident"] == same["real_confident"] == 1
    # every sample in class a, 3 of 4 of them surely (p 0.95), one at p 0.5
    blobs = np.array([[0.95, 0.05, 0, 0]] * 3 + [[0.5, 0.2, 0.2, 0.1]])
    skewed = class_balance(blobs, real, "abcd")
    assert skewed["fake"] == [1, 0, 0, 0]
    assert skewed["total_variation"] == pytest.approx(0.75)  # 1/2 (0.75 + 3 x 0.25)
    assert skewed["confident"] == pytest.approx(0.75)
    half = class_balance(real[[0, 1, 4, 5]], real, "abcd")  # classes a and b only
    assert half["total_variation"] == pytest.approx(0.5)


def test_hue_histograms_same_disjoint_and_half_covered():
    import torch

    from utils.metrics import hue_histograms
    from utils.shapes import _hsv_to_rgb

    def images(hues):
        return (_hsv_to_rgb(torch.tensor(hues, dtype=torch.float32)) * 2 - 1)[
            :, :, None, None].numpy()
    every = images(np.arange(120) / 120)  # every hue, 10 per sector of 12
    same = hue_histograms(every, every)
    assert same["total_variation"] == 0 and same["coverage"] == 1
    reds = hue_histograms(images(np.full(50, 0.01)), every)  # one sector only
    assert reds["coverage"] == pytest.approx(1 / 12)
    assert reds["total_variation"] == pytest.approx(11 / 12)
    half = hue_histograms(images(np.arange(60) / 120), every)  # the first six sectors
    assert half["coverage"] == pytest.approx(0.5) and half["total_variation"] == pytest.approx(0.5)

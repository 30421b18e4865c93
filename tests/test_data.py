import math

import numpy as np
import pytest
import torch

from utils import data as data_module
from utils.data import iterate_batches, load_dataset, to_float, to_uint8
from utils.errors import UserError
from utils.shapes import FACTOR_NAMES, HUE_ARC, SHAPE_NAMES, render_shapes, sample_factors

CPU = torch.device("cpu")


def one_shape(shape: str, scale=0.5, rotation=0.0, x=0.0, y=0.0) -> dict:
    return {"shape": np.array([SHAPE_NAMES.index(shape)]), "hue": np.array([0.0]),
            "scale": np.array([scale]), "rotation": np.array([rotation]), "pos_x": np.array([x]),
            "pos_y": np.array([y]), "background": np.array([0.0])}


@pytest.mark.parametrize("shape, area", [
    ("circle", math.pi), ("square", 2.0), ("triangle", 3 * math.sqrt(3) / 4),
    ("star", 5 * 0.45 * math.sin(math.pi / 5))])
def test_rendered_area_and_centre_match_geometry(shape, area):
    """Coverage (red channel at hue 0) integrates to the polygon's area; its centroid is the
    requested position, with y pointing up."""
    size, r, x, y = 64, 0.5, 0.2, 0.25
    image = render_shapes(one_shape(shape, r, 0.3, x, y), size)[0].double() / 255
    assert image[1:].max() == 0  # pure red at hue 0
    cover = image[0]
    pixel_area = (2 / size) ** 2
    assert cover.sum() * pixel_area == pytest.approx(area * r * r, rel=0.02)
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    cx = (cover.sum(0) * coords).sum() / cover.sum()
    cy = (cover.sum(1) * coords).sum() / cover.sum()
    assert cx.item() == pytest.approx(x, abs=0.01)
    assert -cy.item() == pytest.approx(y, abs=0.01)  # rows grow downwards, pos_y grows upwards


def test_rotation_is_a_fraction_of_the_symmetry_period():
    base = render_shapes(one_shape("square", rotation=0.0), 32)
    full = render_shapes(one_shape("square", rotation=1.0), 32)  # a quarter turn: same square
    half = render_shapes(one_shape("square", rotation=0.5), 32)  # 45 degrees: a diamond
    assert (base.int() - full.int()).abs().max() <= 2
    assert (base.int() - half.int()).abs().sum() > 1000


def test_anti_aliased_edges():
    image = render_shapes(one_shape("circle"), 32)[0, 0]
    partial = ((image > 0) & (image < 255)).sum()
    assert partial > 20  # edge pixels carry fractional coverage


def test_shapes_dataset_shapes_labels_factors_and_determinism():
    train = load_dataset("shapes", "train", image_size=24, n=300, seed=5)
    assert train.images.shape == (300, 3, 24, 24) and train.images.dtype == torch.uint8
    assert train.class_names == list(SHAPE_NAMES)
    assert set(train.factors) == set(FACTOR_NAMES)
    assert torch.equal(train.labels, torch.as_tensor(train.factors["shape"]))
    assert set(train.labels.tolist()) == set(range(4))
    again = load_dataset("shapes", "train", image_size=24, n=300, seed=5)
    other = load_dataset("shapes", "train", image_size=24, n=300, seed=6)
    test = load_dataset("shapes", "test", image_size=24, n=300, seed=5)
    assert torch.equal(train.images, again.images)
    assert not torch.equal(train.images, other.images)
    assert not torch.equal(train.images, test.images)
    circles = train.labels == SHAPE_NAMES.index("circle")
    assert np.all(train.factors["rotation"][circles.numpy()] == 0)


def test_factors_are_independent_and_cover_their_ranges():
    f = sample_factors(20000, seed=0, background=True)
    names = ["hue", "scale", "rotation", "pos_x", "pos_y", "background"]
    values = np.stack([f[n] for n in names])
    corr = np.corrcoef(values)
    assert np.abs(corr - np.eye(len(names))).max() < 0.03
    assert 0 <= f["hue"].min() and f["hue"].max() < 1


def test_shapes_arc_is_shapes_with_hues_from_an_arc():
    full = load_dataset("shapes", "test", image_size=16, n=500, seed=3)
    arc = load_dataset("shapes-arc", "test", image_size=16, n=500, seed=3)
    for name in FACTOR_NAMES:  # the same draws: only the hue is squeezed into the arc
        expected = full.factors[name] * (HUE_ARC if name == "hue" else 1)
        assert np.allclose(arc.factors[name], expected, atol=1e-12), name
    assert arc.factors["hue"].max() > 0.95 * HUE_ARC and arc.factors["hue"].max() < HUE_ARC
    assert torch.equal(arc.labels, full.labels) and not torch.equal(arc.images, full.images)
    magenta = arc.images[:, 0].float() + arc.images[:, 2].float() - 2 * arc.images[:, 1].float()
    assert magenta.max() < 0.8 * 510  # no purple to magenta: the arc stops at blue
    assert (full.images[:, 0].float() + full.images[:, 2].float()
            - 2 * full.images[:, 1].float()).max() > 0.95 * 510


def test_shapes_render_fast_enough_to_be_vectorised():
    images = load_dataset("shapes", image_size=32, n=2000).images
    assert images.float().std() > 10  # not blank


def test_digits():
    train = load_dataset("digits", "train", image_size=16)
    test = load_dataset("digits", "test", image_size=16, channels=3)
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, 16, 16) and test.images.shape[1:] == (3, 16, 16)
    assert train.class_names == [str(d) for d in range(10)]
    assert set(train.labels.tolist()) == set(range(10))
    assert train.images.max() > 200 and train.images.min() == 0


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(UserError, match="did you mean 'digits'"):
        load_dataset("digit")


def test_offline_torchvision_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", root=tmp_path, download=False)
    message = str(err.value)
    assert "cifar10" in message and str(tmp_path) in message and "shapes" in message
    assert "\n" not in message


def test_failed_download_names_the_embedded_alternatives(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def refuse(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")
    monkeypatch.setattr(tvd, "MNIST", refuse)
    with pytest.raises(UserError, match="embedded dataset: shapes, shapes-arc, digits"):
        load_dataset("mnist", root=tmp_path)


def make_folder(root, n_per_class=6):
    from PIL import Image
    for k, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (root / f"class{k}").mkdir(parents=True)
        for i in range(n_per_class):
            Image.new("RGB", (20, 12), colour).save(root / f"class{k}" / f"{i}.png")


def test_image_folder_split_in_memory_and_a_stream_batches_the_same(tmp_path):
    """A folder of class folders: a seeded 10% of each class held out (one of six here), the
    classes named after the folders; a data set too large for memory streams the same
    batches (any torch Dataset of (uint8 image, label))."""
    make_folder(tmp_path / "imgs")
    data = load_dataset("folder", root=tmp_path / "imgs", image_size=8)
    test = load_dataset("folder", "test", root=tmp_path / "imgs", image_size=8)
    assert data.images.shape == (10, 3, 8, 8) and len(test) == 2
    assert data.class_names == test.class_names == ["class0", "class1"]
    assert sorted(test.labels.tolist()) == [0, 1]
    assert data.images[data.labels == 0][:, 0].min() == 255  # red class

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data.images[i], int(data.labels[i])
    streamed = data_module.ImageData("folder", None, data.labels, data.class_names,
                                     stream=Items(), shape=data.shape)
    batches = list(iterate_batches(streamed, 4, CPU, shuffle=False))
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(to_uint8(x), data.images[:len(x)]) and len(x) == 8  # whole batches


def test_batches_visit_every_image_once_normalised():
    data = load_dataset("digits", image_size=8)
    data.images = torch.arange(len(data)).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).to(torch.uint8)
    seen = torch.cat([to_uint8(x)[:, 0, 0, 0] for x, _ in iterate_batches(
        data, 100, CPU, drop_last=False)])
    assert sorted(seen.tolist()) == sorted(data.images[:, 0, 0, 0].tolist())
    x, _ = next(iterate_batches(data, 64, CPU))
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert torch.equal(to_float(torch.tensor([0, 255], dtype=torch.uint8)),
                       torch.tensor([-1.0, 1.0]))


def test_flip_mirrors_about_half_the_batch():
    data = load_dataset("digits", image_size=8)
    torch.manual_seed(0)
    x, _ = next(iterate_batches(data, 512, CPU, shuffle=False, flip=True))
    plain = to_float(data.images[:512])
    flipped = (x != plain).flatten(1).any(1) & (x == plain.flip(-1)).flatten(1).all(1)
    assert 0.35 < flipped.float().mean() < 0.65

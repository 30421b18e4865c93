"""DATASET="folder": a user's images as a data set. Small generated folders in tmp_path: the
layouts, any mode and size, the seeded stratified split, the cache and its invalidation, and one
clear line for a corrupt file or an empty folder."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from utils import image_folder
from utils.data import load_dataset
from utils.errors import UserError


def _image(path, mode="RGB", size=(40, 30), value=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2 ** 32)
    if mode in ("I;16",):
        array = rng.integers(0, 65535, size[::-1], dtype=np.uint16)
        Image.fromarray(array).save(path)
        return
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode if mode != "P" else "RGB"]
    array = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    if value is not None:
        array[:] = value
    img = Image.fromarray(array.squeeze(-1) if channels == 1 else array)
    if mode == "P":
        img = img.convert("P")
    img.save(path, format=fmt)


def _classes(root, counts, mode="RGB", ext=".png"):
    for name, count in counts.items():
        for i in range(count):
            _image(root / name / f"{i:03d}{ext}", mode)


def test_one_folder_of_classes_is_split_seeded_and_stratified(tmp_path):
    _classes(tmp_path, {"cat": 20, "dog": 10, "owl": 1})
    (tmp_path / "notes.txt").write_text("not an image")
    train = image_folder.list_split(tmp_path, "train", seed=0)
    test = image_folder.list_split(tmp_path, "test", seed=0)
    assert train.classes == test.classes == ["cat", "dog", "owl"]
    assert sorted(np.bincount(test.labels, minlength=3).tolist()) == [0, 1, 2]  # 10%, >= 1
    assert len(train.files) + len(test.files) == 31 and not set(train.files) & set(test.files)
    again = image_folder.list_split(tmp_path, "test", seed=0)
    other = image_folder.list_split(tmp_path, "test", seed=1)
    assert again.files == test.files and set(other.files) != set(test.files)
    assert train.labels[:10] != sorted(train.labels[:10])  # the order mixes the classes


def test_train_and_test_subfolders_are_the_split_and_share_the_class_indices(tmp_path):
    _classes(tmp_path / "train", {"a": 3, "b": 3, "c": 3})
    _classes(tmp_path / "test", {"c": 2})
    test = image_folder.list_split(tmp_path, "test", seed=0)
    assert test.classes == ["a", "b", "c"] and test.labels == [2, 2]
    _classes(tmp_path / "test", {"z": 1})
    with pytest.raises(UserError, match="classes that .* does not: z"):
        image_folder.list_split(tmp_path, "test", seed=0)


def test_any_mode_and_size_becomes_the_run_s_channels_and_size(tmp_path):
    modes = [("RGB", ".jpg"), ("L", ".png"), ("RGBA", ".webp"), ("P", ".bmp"), ("I;16", ".png")]
    for i, (mode, ext) in enumerate(modes):
        _image(tmp_path / "mixed" / f"{i}{ext}", mode, size=(17 + 9 * i, 50 - 5 * i))
    data = load_dataset("folder", "train", image_size=16, root=tmp_path / "mixed", n=None)
    assert data.images.dtype == torch.uint8 and data.shape == (3, 16, 16)
    assert data.class_names == ["mixed"] and len(data) + len(
        load_dataset("folder", "test", 16, channels=3, root=tmp_path / "mixed")) == 5
    grey = load_dataset("folder", "train", 16, channels=1, root=tmp_path / "mixed")
    assert grey.shape == (1, 16, 16)


def test_a_grey_folder_loads_as_one_channel_and_the_crop_is_central(tmp_path):
    img = np.zeros((20, 60), np.uint8)
    img[:, 25:35] = 255  # a white band in the middle sixth: the middle half of the crop
    (tmp_path / "g").mkdir()
    Image.fromarray(img).save(tmp_path / "g" / "band.png")
    Image.fromarray(img).save(tmp_path / "g" / "band2.png")
    x = image_folder.decode(tmp_path / "g" / "band.png", 10, 1)
    assert x.shape == (1, 10, 10) and x[0, :, 4:6].min() > 200
    assert x[0, :, 0].max() < 60 and x[0, :, 9].max() < 60
    assert image_folder.detect_channels(sorted((tmp_path / "g").glob("*.png"))) == 1
    _image(tmp_path / "g" / "colour.png", "RGB")
    assert image_folder.detect_channels(sorted((tmp_path / "g").glob("*.png"))) == 3


def test_alpha_is_composited_over_black_and_16_bit_scaled(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255  # white, fully transparent
    Image.fromarray(rgba).save(tmp_path / "t.png")
    assert image_folder.decode(tmp_path / "t.png", 8, 3).max() == 0
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "w.png")
    assert image_folder.decode(tmp_path / "w.png", 8, 1).min() == 255


def test_the_cache_is_reused_and_rebuilt_when_the_folder_changes(tmp_path, monkeypatch):
    _classes(tmp_path, {"a": 6, "b": 6})
    first = load_dataset("folder", "train", 16, root=tmp_path)
    cached = sorted((tmp_path / ".cache").glob("train-16px-3c-*.pt"))
    assert len(cached) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")
    monkeypatch.setattr(image_folder, "decode_all", no_decoding)
    again = load_dataset("folder", "train", 16, root=tmp_path)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    monkeypatch.undo()
    changed = next(f for f in image_folder.list_split(tmp_path, "train", 0).files)
    _image(changed, "RGB", value=7)  # same name, new contents and mtime
    os.utime(changed, ns=(1, 1))
    rebuilt = load_dataset("folder", "train", 16, root=tmp_path)
    assert not torch.equal(rebuilt.images, first.images)
    assert [p.name for p in (tmp_path / ".cache").glob("train-16px-3c-*.pt")] != \
           [p.name for p in cached] and len(list((tmp_path / ".cache").glob("train-*"))) == 1
    (next((tmp_path / ".cache").glob("train-*"))).write_bytes(b"damaged")
    assert torch.equal(load_dataset("folder", "train", 16, root=tmp_path).images, rebuilt.images)


def test_a_corrupt_file_is_one_line_naming_it_and_the_others(tmp_path):
    _classes(tmp_path, {"a": 4})
    (tmp_path / "a" / "bad1.png").write_bytes(b"not a png")
    (tmp_path / "a" / "bad2.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=r"bad\d\.\w+ \(and 1 other file\(s\)\): not a readable"):
        image_folder.decode_all(sorted((tmp_path / "a").iterdir()), 8, 3, workers=2)
    with pytest.raises(UserError, match=r"bad\d\.\w+ \(and 1 other"):
        load_dataset("folder", "train", 8, root=tmp_path)  # the whole folder, once


@pytest.mark.parametrize("make", ["missing", "empty", "no images"])
def test_an_empty_or_missing_folder_is_one_line(tmp_path, make):
    root = tmp_path / "data"
    if make != "missing":
        root.mkdir()
    if make == "no images":
        (root / "cats").mkdir()
        (root / "cats" / "readme.txt").write_text("hello")
    with pytest.raises(UserError, match="not a folder|no images"):
        load_dataset("folder", "train", 16, root=root)


def test_the_folder_load_benchmark_times_a_first_and_a_cached_load(tmp_path):
    from benchmarks import folder_load
    _classes(tmp_path / "imgs", {"a": 5, "b": 5})
    rows = folder_load.main([f"--DATA_ROOT={tmp_path / 'imgs'}", "--IMAGE_SIZE=8", "--NAME=t",
                             f"--RESULTS={tmp_path / 'out'}"])
    assert [r["images"] for r in rows] == [8, 8]  # one image of each class held out
    assert rows[0]["shape"] == [3, 8, 8]
    assert "| cached |" in (tmp_path / "out" / "folder_load_t.md").read_text()


def test_a_run_on_a_folder_is_named_after_it_and_its_eval_uses_the_same_held_out_split(tmp_path):
    """ganmain and evalGan on a folder of two classes: the run is named after the folder, and
    the checkpoint's data spec reloads the same test images (the cache, the same seed)."""
    from GAN_run_scripts import ganmain
    from utils.runs import find_run
    _classes(tmp_path / "my pets", {"cat": 12, "dog": 12})
    run = ganmain.main([f"--SAVE_ROOT={tmp_path / 'out'}", f"--DATA_ROOT={tmp_path / 'my pets'}",
                        "--DATASET=folder", "--IMAGE_SIZE=16", "--EPOCHS=1", "--WIDTH=8",
                        "--BATCH_SIZE=8", "--PRECISION=fp32", "--TENSORBOARD=False",
                        "--N_FIXED=8"])
    assert run.name == "001-gan-my-pets-z100"
    from train.inference import load_run
    loaded = load_run(tmp_path / "out", "gan", "latest", torch.device("cpu"))
    held = loaded.data.held_out(None, tmp_path / "my pets")
    assert held.class_names == ["cat", "dog"] and len(held) == 2 and held.shape == (3, 16, 16)
    assert find_run(tmp_path / "out", "gan").name == run.name


def test_two_folders_never_share_an_evaluator(tmp_path):
    from train.evaluator import evaluator_path
    a, b = (evaluator_path(tmp_path, "folder", 32, 1, tmp_path / name / "images")
            for name in ("a", "b"))
    assert a != b and a.name.startswith("folder-images-")
    assert evaluator_path(tmp_path, "shapes", 32, 3, tmp_path / "a").name == "shapes-32px-3ch.pt"

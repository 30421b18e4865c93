"""Datasets by name, held in memory as uint8 and batched by indexing, normalised per batch.

Embedded (no network): `shapes` (procedural, with ground-truth factors), `shapes-arc` (the same
with hues from an arc of the colour circle instead of all of it, so hue is an interval) and
`digits` (scikit-learn's handwritten digits), `scenes` (one or two shapes with captions
written from their ground truth, utils/scenes.py; labelled by the first object's shape). With
internet: torchvision's CIFAR-10, MNIST,
Fashion-MNIST, CelebA and Stanford Cars. Offline: `folder`, any folder of class subfolders of
images (utils/image_folder.py: its own train/test or a seeded held-out split, decoded once into
a cache).
A torchvision dataset larger than MAX_IN_MEMORY_BYTES is streamed from disk; a folder is held
in memory (its cache).
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from utils import distributed
from utils.errors import UserError
from utils.image_folder import image_decode_errors, load_folder
from utils.shapes import HUE_ARC, SHAPE_NAMES, make_shapes

EMBEDDED = ("shapes", "shapes-arc", "digits", "scenes")
TORCHVISION = ("cifar10", "mnist", "fashionmnist", "celeba", "stanfordcars")
DATASETS = EMBEDDED + TORCHVISION + ("folder",)
MAX_IN_MEMORY_BYTES = 1 << 30  # larger datasets stream from disk through a DataLoader
_NATIVE_CHANNELS = {"digits": 1, "mnist": 1, "fashionmnist": 1}
_TEST_SEED_OFFSET = 1_000_003  # shapes: the test split is rendered from an unrelated seed


@dataclass
class ImageData:
    """Images as uint8 (N, C, H, W) (or a streamed torch Dataset), integer labels, class names."""
    name: str
    images: torch.Tensor | None
    labels: torch.Tensor
    class_names: list[str]
    factors: dict[str, np.ndarray] | None = None  # ground truth per image (shapes only)
    stream: torch.utils.data.Dataset | None = field(default=None, repr=False)
    shape: tuple[int, int, int] = (3, 32, 32)  # (C, H, W) of one image
    scenes: dict | None = field(default=None, repr=False)  # scenes: utils.scenes factors

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device) -> "ImageData":
        """The same data with the uint8 images moved to device once (CUDA: no per-batch copy)."""
        if self.images is None or self.images.device == device:
            return self
        return ImageData(self.name, self.images.to(device), self.labels.to(device),
                         self.class_names, self.factors, shape=self.shape, scenes=self.scenes)

    def first(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n images as floats in [-1, 1] with their labels."""
        if self.images is not None:
            return to_float(self.images[:n]), self.labels[:n]
        items = [self.stream[i] for i in range(min(n, len(self)))]
        return to_float(torch.stack([x for x, _ in items])), torch.tensor([y for _, y in items])


@dataclass(frozen=True)
class DataSpec:
    """What a run trains on, stored in its checkpoint, so that eval scripts, the LDM's stage 2
    and benchmarks load the same images without reading another run's constants."""
    dataset: str
    image_size: int
    channels: int
    seed: int  # the shapes renderer's seed (the test split uses an unrelated one)

    def load(self, split: str, n: int | None = None, root: str | Path = "data") -> ImageData:
        return load_dataset(self.dataset, split, self.image_size, self.channels, root, n,
                            self.seed)

    def held_out(self, n: int | None = None, root: str | Path = "data") -> ImageData:
        """The test split: images the run never trained on."""
        return self.load("test", n, root)

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "image_size": self.image_size,
                "channels": self.channels, "seed": self.seed}

    @classmethod
    def of(cls, checkpoint: dict) -> "DataSpec":
        """The data spec stored in a checkpoint."""
        return cls(**checkpoint["data"])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clipped."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 (N, C, h, w) to (N, C, size, size) with antialiased bilinear filtering."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def _set_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if channels == 3 and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and images.shape[1] == 3:  # ITU-R 601 luma
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
    raise UserError(f"cannot convert {images.shape[1]}-channel images to {channels} channels")


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from sklearn.datasets import load_digits
    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0))).to(torch.uint8)[:, None]
    labels = torch.from_numpy(bunch.target).long()
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))  # fixed split
    keep = order[:-300] if split == "train" else order[-300:]
    return images[keep], labels[keep], [str(d) for d in range(10)]


def _torchvision_dataset(name: str, split: str, root: Path, download: bool, transform):
    import torchvision.datasets as tvd
    train = split == "train"
    if name == "cifar10":
        return tvd.CIFAR10(root, train=train, download=download, transform=transform)
    if name == "mnist":
        return tvd.MNIST(root, train=train, download=download, transform=transform)
    if name == "fashionmnist":
        return tvd.FashionMNIST(root, train=train, download=download, transform=transform)
    if name == "celeba":
        return tvd.CelebA(root, split="train" if train else "test", target_type="identity",
                          download=download, transform=transform)
    if name == "stanfordcars":
        return tvd.StanfordCars(root, split="train" if train else "test", download=download,
                                transform=transform)
    raise ValueError(f"no torchvision dataset {name}")


def _class_names(name: str, dataset) -> list[str]:
    if name == "celeba":
        return ["face"]  # identities are not classes worth conditioning on
    return list(getattr(dataset, "classes", None) or ["image"])


def _external(name: str, split: str, size: int, channels: int, root: Path, download: bool,
              n: int | None) -> ImageData:
    """A torchvision dataset or an image folder, decoded once into memory unless too large."""
    import torchvision.transforms.v2 as T
    steps = [T.Resize(size, antialias=True), T.CenterCrop(size)]
    steps += [T.Grayscale(channels)] if channels == 1 else [T.RGB()]
    transform = T.Compose([T.PILToTensor(), *steps])
    folder = root if name == "folder" else root / name
    try:
        dataset = _torchvision_dataset(name, split, folder, download, transform)
    except Exception as err:  # noqa: BLE001 - torchvision raises many kinds on a failed download
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"could not load dataset '{name}' from {folder.resolve()} ({reason}); "
                        f"without internet use an embedded dataset: {', '.join(EMBEDDED)}") from err
    count = len(dataset) if n is None else min(n, len(dataset))
    if name in ("celeba",):
        labels = torch.zeros(count, dtype=torch.long)
    else:
        targets = getattr(dataset, "targets", None)
        if targets is None:  # StanfordCars keeps (path, label) pairs
            targets = [label for _, label in dataset._samples]
        labels = torch.as_tensor(targets[:count], dtype=torch.long)
    classes, shape = _class_names(name, dataset), (channels, size, size)
    if count * channels * size * size > MAX_IN_MEMORY_BYTES:
        subset = torch.utils.data.Subset(dataset, range(count))
        return ImageData(name, None, labels, classes, stream=subset, shape=shape)
    raw = getattr(dataset, "data", None)
    if name in ("cifar10", "mnist", "fashionmnist") and raw is not None:  # no PIL per image
        images = torch.as_tensor(np.asarray(raw[:count]))
        images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)
        images = _set_channels(_resize_uint8(images, size), channels)
    else:
        images = _decode_all(dataset, count)  # decoded once
    return ImageData(name, images.contiguous(), labels, classes, shape=shape)


def _decode_all(dataset, count: int) -> torch.Tensor:
    """The first `count` images of a torchvision dataset, stacked; files that cannot be decoded
    (corrupt, empty, truncated, a decompression bomb) are one UserError naming the first and how
    many others, so they can be fixed or removed."""
    images, bad, errors = [], [], image_decode_errors()
    for i in range(count):
        try:
            images.append(dataset[i][0])
        except errors as err:
            bad.append((i, err))
    if bad:
        index, err = bad[0]
        samples = getattr(dataset, "samples", None)
        where = samples[index][0] if samples else f"image {index}"
        others = f" and {len(bad) - 1} other file(s)" if len(bad) > 1 else ""
        raise UserError(f"{where}{others}: not a readable image ({type(err).__name__}: "
                        f"{str(err).strip()[:120]}); fix or remove them")
    return torch.stack(images)


def load_dataset(name: str = "shapes", split: str = "train", image_size: int = 32,
                 channels: int | None = None, root: str | Path = "data", n: int | None = None,
                 seed: int = 0, download: bool = True, shapes_background: bool = False
                 ) -> ImageData:
    """Build a dataset by name; images are uint8 (N, C, H, W), see to_float() for [-1, 1]."""
    if name not in DATASETS:
        import difflib
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown dataset '{name}'{hint}; choose from {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    if image_size < 8:
        raise UserError(f"IMAGE_SIZE={image_size} is too small (at least 8)")
    if name != "folder":  # a folder's images say themselves (utils.image_folder)
        channels = channels or _NATIVE_CHANNELS.get(name, 3)
    if channels not in (1, 3, None):
        raise UserError(f"channels must be 1 or 3, got {channels}")
    if name in ("shapes", "shapes-arc"):
        count = n or (20000 if split == "train" else 2000)
        images, labels, factors = make_shapes(
            count, image_size, seed if split == "train" else seed + _TEST_SEED_OFFSET,
            shapes_background, HUE_ARC if name == "shapes-arc" else 1.0)
        images = _set_channels(images, channels)
        return ImageData(name, images, labels, list(SHAPE_NAMES), factors,
                         shape=(channels, image_size, image_size))
    if name == "scenes":  # labelled by the (first) object's shape; captions from .scenes
        from utils.scenes import render_scenes, sample_scenes
        scenes = sample_scenes(n or (20000 if split == "train" else 2000), seed, split)
        images = _set_channels(render_scenes(scenes, image_size), channels)
        return ImageData(name, images, torch.as_tensor(scenes["shape"][:, 0]),
                         list(SHAPE_NAMES), shape=(channels, image_size, image_size),
                         scenes=scenes)
    if name == "digits":
        images, labels, classes = _digits(split)
        images = _set_channels(_resize_uint8(images, image_size), channels)[:n]
        return ImageData(name, images, labels[:n], classes,
                         shape=(channels, image_size, image_size))
    if name == "folder":
        images, labels, classes = load_folder(root, split, image_size, channels, seed)
        images, labels = images[:n], labels[:n]  # the order is seeded and mixes the classes
        return ImageData(name, images, labels, classes, shape=tuple(images.shape[1:]))
    return _external(name, split, image_size, channels, Path(root), download, n)


def iterate_batches(data: ImageData, batch_size: int, device: torch.device, *,
                    shuffle: bool = True, flip: bool = False, drop_last: bool = True,
                    shard: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images in [-1, 1] on device, labels) batches; order from torch's global RNG.

    With shard (training), batch_size is the global batch: under torchrun each rank takes its
    slice of every batch of one permutation, so a step sees the images of a single-process
    step. In-memory data is indexed where it lives (data.to(device) keeps it on a GPU).
    """
    if data.images is None:
        yield from _stream_batches(data, batch_size, device, shuffle, flip, drop_last, shard)
        return
    n = len(data)
    order = torch.randperm(n) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        index = (distributed.shard(index) if shard else index).to(data.images.device)
        x = _flip(to_float(data.images[index].to(device)), flip)
        yield x, data.labels[index].to(device)


def _stream_batches(data, batch_size, device, shuffle, flip, drop_last, shard):
    """Batches from disk through worker processes; pinned memory only on CUDA. Under torchrun
    a DistributedSampler gives each rank its share (reshuffled per epoch by set_epoch)."""
    sampler = None
    if shard and distributed.is_distributed():
        sampler = torch.utils.data.DistributedSampler(
            data.stream, shuffle=shuffle, drop_last=drop_last,
            seed=int(torch.randint(0, 2 ** 31 - 1, ()).item()))  # from the shared RNG
        shuffle = False
    loader = torch.utils.data.DataLoader(
        data.stream, batch_size=distributed.local_batch(batch_size) if shard else batch_size,
        shuffle=shuffle,
        sampler=sampler, drop_last=drop_last, num_workers=2,
        pin_memory=device.type == "cuda", persistent_workers=False)
    for x, y in loader:
        yield _flip(to_float(x.to(device, non_blocking=True)), flip), y.to(device)


def _flip(x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Random horizontal flip of half the batch (augmentation, off by default)."""
    if not flip:
        return x
    return torch.where(distributed.rand((len(x), 1, 1, 1), device=x.device) < 0.5,
                       x.flip(-1), x)


def batches_per_epoch(data: ImageData, batch_size: int, drop_last: bool = True) -> int:
    n = len(data)
    return n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)

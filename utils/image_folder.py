"""A folder of images as a data set: class subfolders, a held-out split, decoded once.

    DATA_ROOT/train/<class>/*.png   and   DATA_ROOT/test/<class>/*.jpg     (its own split)
    DATA_ROOT/<class>/*.webp                       (a seeded, stratified TEST_SHARE held out)
    DATA_ROOT/*.bmp                                (one class, named after the folder)

PNG, JPEG, WebP and BMP files of any size and mode, nested at any depth under their class
folder; other files are ignored. Each image is converted to the run's channels (RGB, or grey;
alpha composited over black; 16-bit and float images scaled to 8 bits), its short side resized
to the image size (bicubic, antialiased) and centre-cropped: the policy is printed once.

Decoding tens of thousands of files takes a while on 2 cores, so it happens once: the uint8
images are cached in DATA_ROOT/.cache/ (or the system's temporary folder if DATA_ROOT is
read-only) under a key of the split's listing (every path, size and modification time), the
image size and the channels. Later runs and the eval scripts load the cache; a changed folder
gets a new key and is decoded again (the outdated cache file is removed).
"""
import contextlib
import hashlib
import os
import re
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from utils import distributed
from utils.errors import UserError
from utils.files import atomic_open

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TEST_SHARE = 0.1  # share of each class held out when the folder has no train/ and test/
CACHE_VERSION = 1  # bump when the decoding policy changes: old caches are then not reused
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")  # single-channel Pillow modes
CHUNK = 256  # files per task of the decoding pool


@dataclass
class Split:
    """The files of one split, their labels, and the class names (the subfolder names)."""
    files: list[Path]
    labels: list[int]
    classes: list[str]


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere under `folder` (hidden files and folders skipped), sorted."""
    found = []
    for path, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(path) / n for n in names
                  if not n.startswith(".") and n.lower().endswith(EXTENSIONS)]
    return sorted(found)


def _class_folders(root: Path) -> Split:
    """Class subfolders of `root` (or, without any, the images directly in it as one class)."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        files = _images_under(root)
        return Split(files, [0] * len(files), [root.resolve().name or "images"])
    files, labels, classes = [], [], []
    for folder in subdirs:
        inside = _images_under(folder)
        if inside:  # an empty subfolder is not a class
            files += inside
            labels += [len(classes)] * len(inside)
            classes.append(folder.name)
    return Split(files, labels, classes)


def list_split(root: str | Path, split: str, seed: int) -> Split:
    """The files of `split` ("train" or "test") of the folder at `root` in a seeded random order
    (so that the first n images mix the classes, as a torchvision set's do); see the module's
    docstring for the layouts. A missing, empty or image-less folder is a UserError."""
    found = _list_split(Path(root), split, seed)
    order = np.random.default_rng([seed, 1 if split == "train" else 2]).permutation(
        len(found.files))
    return Split([found.files[i] for i in order], [found.labels[i] for i in order],
                 found.classes)


def _list_split(root: Path, split: str, seed: int) -> Split:
    if not root.is_dir():
        raise UserError(f"DATA_ROOT={str(root)!r} is not a folder (DATASET='folder' reads class "
                        f"subfolders of images there)")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = _class_folders(root / "train")
        if split == "train":
            return _nonempty(train, root / "train")
        test = _nonempty(_class_folders(root / "test"), root / "test")
        unknown = sorted(set(test.classes) - set(train.classes))
        if unknown:
            raise UserError(f"{root / 'test'} has classes that {root / 'train'} does not: "
                            f"{', '.join(unknown[:5])}")
        index = {name: i for i, name in enumerate(train.classes)}
        return Split(test.files, [index[test.classes[y]] for y in test.labels], train.classes)
    return held_out(_nonempty(_class_folders(root), root), split, seed)


def _nonempty(found: Split, root: Path) -> Split:
    if not found.files:
        raise UserError(f"no images in {root} (looked for {', '.join(EXTENSIONS)} files in it "
                        f"and its class subfolders)")
    return found


def held_out(found: Split, split: str, seed: int, share: float = TEST_SHARE) -> Split:
    """A seeded, stratified split: round(share * n) of each class's n images (at least one
    when n >= 2, none when n == 1) form the test split, the rest the training split."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(found.labels)
    chosen = []
    for label in range(len(found.classes)):
        members = np.flatnonzero(labels == label)
        n_test = 0 if len(members) < 2 else max(1, round(share * len(members)))
        picked = rng.permutation(members)[:n_test]
        chosen += picked.tolist() if split == "test" else sorted(set(members) - set(picked))
    chosen = sorted(chosen)
    return Split([found.files[i] for i in chosen], [found.labels[i] for i in chosen],
                 found.classes)


def folder_label(root: str | Path) -> str:
    """The folder's name as one safe part of a run's name (e.g. 001-gan-cifar10-z100)."""
    name = re.sub(r"[^A-Za-z0-9._+=,-]+", "-", Path(root).resolve().name).strip("-._+=,")
    return name[:60] or "folder"


def detect_channels(files: list[Path], sample: int = 64) -> int:
    """1 if every sampled image (spread over the listing) is single-channel, else 3."""
    from PIL import Image
    picks = np.linspace(0, len(files) - 1, min(sample, len(files))).round().astype(int)
    for i in sorted(set(picks.tolist())):
        try:
            with Image.open(files[i]) as img:
                grey = img.mode in GREY_MODES or (img.mode == "P" and _grey_palette(img))
        except (OSError, ValueError, SyntaxError):
            continue  # decoding reports it with the others
        if not grey:
            return 3
    return 1


def _grey_palette(img) -> bool:
    palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(len(palette)) and bool((palette == palette[:, :1]).all())


def decode(path: Path, size: int, channels: int) -> np.ndarray:
    """One file as uint8 (channels, size, size): converted, short side resized, centre crop."""
    from PIL import Image
    with Image.open(path) as img:
        img.draft("RGB" if channels == 3 else "L", (size, size))  # JPEG: decode at 1/2^k scale
        img = _eight_bit(img)
        if "A" in img.getbands() or "transparency" in img.info:
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        img = img.convert("RGB" if channels == 3 else "L")
        w, h = img.size
        scale = size / min(w, h)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        img = img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
        array = np.asarray(img, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _eight_bit(img):
    """16-bit integer and float images scaled to 8 bits (Pillow's convert would clip them)."""
    from PIL import Image
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(img, dtype=np.float64)
        peak = array.max()
        if img.mode == "F":  # [0, 1] floats, or 8-bit values stored as floats
            top = 1.0 if peak <= 1.0 else max(255.0, peak)
        else:  # 16-bit integers (or 8-bit values in a 32-bit mode)
            top = 65535.0 if peak > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0, 0, 255).round().astype(np.uint8))
    return img


def image_decode_errors() -> tuple[type[BaseException], ...]:
    """What Pillow raises on a file it cannot decode: empty, corrupt, truncated, not an image,
    or a decompression bomb (more pixels than Image.MAX_IMAGE_PIXELS allows)."""
    from PIL import Image
    return OSError, ValueError, SyntaxError, Image.DecompressionBombError


def _decode_chunk(args: tuple[list[Path], int, int]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode a chunk of files; unreadable ones are returned as (path, reason) instead."""
    paths, size, channels = args
    out, bad = np.zeros((len(paths), channels, size, size), np.uint8), []
    for i, path in enumerate(paths):
        try:
            out[i] = decode(path, size, channels)
        except image_decode_errors() as err:
            bad.append((str(path), f"{type(err).__name__}: {str(err).strip()[:100]}"))
    return out, bad


def decode_all(files: list[Path], size: int, channels: int, workers: int | None = None,
               desc: str = "decoding") -> torch.Tensor:
    """Every file decoded in parallel (one process per core) behind a tqdm bar, as uint8
    (N, C, size, size); unreadable files are one UserError naming the first and the count."""
    chunks = [files[i:i + CHUNK] for i in range(0, len(files), CHUNK)]
    workers = workers or min(os.cpu_count() or 1, max(1, len(chunks)))
    tasks, parts, bad = [(c, size, channels) for c in chunks], [], []
    pool = ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext()
    with pool, tqdm(total=len(files), desc=desc, unit="img",
                    disable=not distributed.is_main()) as bar:
        for images, failed in (pool.map if workers > 1 else map)(_decode_chunk, tasks):
            parts.append(images)
            bad.extend(failed)
            bar.update(len(images))
    if bad:
        others = f" (and {len(bad) - 1} other file(s))" if len(bad) > 1 else ""
        raise UserError(f"{bad[0][0]}{others}: not a readable image ({bad[0][1]}); fix or "
                        f"remove it")
    return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(
        0, channels, size, size, dtype=torch.uint8)


def cache_key(found: Split, size: int, channels: int, root: Path) -> str:
    """A digest of what the cached images depend on: each file's path (relative to the folder),
    size and modification time, its label, the image size, channels and decoding policy."""
    digest = hashlib.sha1(f"v{CACHE_VERSION} {size} {channels} {found.classes}".encode())
    for path, label in zip(found.files, found.labels):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n"
                      .encode())
    return digest.hexdigest()[:20]


def cache_folder(root: Path) -> Path:
    """DATA_ROOT/.cache if it can be written, else a folder in the system's temporary folder."""
    for folder in (root / ".cache",
                   Path(tempfile.gettempdir()) / "genlab-cache" /
                   hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise UserError(f"no writable cache folder for {root} (tried {root / '.cache'} and the "
                    f"temporary folder)")


_POLICY_SHOWN = set()


def load_folder(root: str | Path, split: str, size: int, channels: int | None, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(uint8 images (N, C, size, size), labels, class names) of one split, from the cache or
    decoded into it. channels None: 1 if the folder's images are grey, else 3."""
    root = Path(root)
    found = list_split(root, split, seed)
    channels = channels or detect_channels(found.files)
    key = cache_key(found, size, channels, root)
    name = f"{split}-{size}px-{channels}c"
    if (root, channels) not in _POLICY_SHOWN:
        _POLICY_SHOWN.add((root, channels))
        own = (root / "train").is_dir() and (root / "test").is_dir()
        split_from = ("its train/ and test/ folders" if own else
                      f"{TEST_SHARE:.0%} of each class held out for testing (seed {seed})")
        print(f"folder {root}: {len(found.classes)} classes, {split_from}; images converted to "
              f"{'RGB' if channels == 3 else 'grey'} (alpha over black), short side resized to "
              f"{size} px (bicubic), centre-cropped to {size}x{size}")
    folder = cache_folder(root)
    path = folder / f"{name}-{key}.pt"
    cached = _read_cache(path)
    if cached is None:
        problem = None
        if distributed.is_main():  # under torchrun one process decodes, the others wait
            try:
                cached = _build_cache(found, size, channels, path, split)
            except UserError as err:
                problem = str(err)
        problem = distributed.broadcast_object(problem)  # every rank: the cache, or the error
        if problem:
            raise UserError(problem)
        cached = cached or _read_cache(path)
        if cached is None:  # another node's rank 0 wrote it where this one cannot see it
            raise UserError(f"the image cache {path} is not visible to this process: put "
                            f"DATA_ROOT on a file system every node shares")
    return cached["images"], cached["labels"], list(cached["classes"])


def _build_cache(found: Split, size: int, channels: int, path: Path, split: str) -> dict:
    """Decode the split and write its cache (replacing the folder's outdated ones)."""
    images = decode_all(found.files, size, channels, desc=f"decoding {split} once")
    cached = {"images": images, "labels": torch.tensor(found.labels, dtype=torch.long),
              "classes": found.classes}
    with atomic_open(path) as f:
        torch.save(cached, f)
    prefix = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{prefix}-*.pt"):  # caches of the folder as it was before
        if old != path:
            old.unlink(missing_ok=True)
    print(f"cached {len(images)} {split} images in {path}")
    return cached


def _read_cache(path: Path) -> dict | None:
    """The cached split, or None when there is none or it cannot be read (it is then removed
    and decoded again: a cache is never trusted over the images)."""
    if not path.exists():
        return None
    try:
        cached = torch.load(path, weights_only=True)
        if cached["images"].dtype == torch.uint8 and len(cached["images"]) == len(
                cached["labels"]):
            return cached
    except Exception:  # noqa: BLE001 - truncated, foreign or damaged: rebuilt below
        pass
    path.unlink(missing_ok=True)
    return None

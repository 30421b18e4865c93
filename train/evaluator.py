"""Train (once) and cache the evaluator classifier of a data set, and score generated samples
against held-out real images with it: FID, KID, precision/recall, class accuracy, and the
real-vs-real floor of each (Heusel et al. 2017 note FID's bias at small sample counts), the mix
of classes the classifier sees in the samples and how surely, and for colour images the hue
histograms of samples and real images."""
import hashlib
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.evaluator import EvaluatorCNN
from utils.board import log_final_metrics
from utils.data import ImageData, iterate_batches, load_dataset, to_float
from utils.errors import UserError
from utils.image_folder import folder_label
from utils.metrics import (class_balance, feature_statistics, frechet_distance,
                           hue_histograms, kernel_inception_distance, precision_recall)
from utils.plots import save_class_rows, save_hue_histogram
from utils.runs import (CHECKPOINT_VERSION, load_checkpoint, load_state, save_checkpoint,
                        write_json)

# held-out accuracy an evaluator must reach
THRESHOLDS = {"shapes": 0.98, "shapes-arc": 0.98, "digits": 0.95}
EXTRACTORS = ("evaluator", "inception")


def evaluator_path(save_root, dataset: str, image_size: int, channels: int,
                   data_root="data") -> Path:
    """Where the evaluator of a data set is cached; a folder's is named after that folder (and
    its full path's digest), so two folders never share one."""
    if dataset == "folder":
        digest = hashlib.sha1(str(Path(data_root).resolve()).encode()).hexdigest()[:8]
        dataset = f"folder-{folder_label(data_root)}-{digest}"
    return (Path(save_root) / "saved_models" / "evaluators"
            / f"{dataset}-{image_size}px-{channels}ch.pt")


MIN_STEPS = 400  # small data sets (digits) get more epochs, so every evaluator sees enough steps
NOISE_STD = 0.1  # training augmentation: Gaussian noise of std U(0, NOISE_STD) on half a batch
RECIPE = 2  # bumped when training changes, so that cached evaluators are retrained


def factor_targets(data: ImageData) -> torch.Tensor | None:
    """Standardised continuous factors (shapes: hue as a point on the colour circle, scale,
    x and y position) regressed beside the class, or None for data without factors."""
    if not data.factors:
        return None
    hue = torch.as_tensor(data.factors["hue"]) * 2 * torch.pi
    cols = [hue.cos(), hue.sin()] + [torch.as_tensor(data.factors[k])
                                     for k in ("scale", "pos_x", "pos_y")]
    t = torch.stack(cols, 1).float()
    return (t - t.mean(0)) / t.std(0).clamp_min(1e-6)


def _noisy(x: torch.Tensor) -> torch.Tensor:
    """Half the batch with Gaussian noise: features that do not jump on slightly noisy samples
    (an under-trained diffusion model's), while a noise image stays far from every real one."""
    std = torch.rand(len(x), 1, 1, 1, device=x.device) * NOISE_STD
    std[: len(x) // 2] = 0
    return x + std * torch.randn_like(x)


def _batches(data: ImageData, targets, batch_size: int, device: torch.device):
    """(images, labels, factor targets or None) batches in a fresh random order."""
    if data.images is None:  # streamed from disk (no factors)
        for x, y in iterate_batches(data, batch_size, device):
            yield x, y, None
        return
    order = torch.randperm(len(data))
    for start in range(0, len(data) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        t = None if targets is None else targets[index].to(device)
        yield to_float(data.images[index].to(device)), data.labels[index].to(device), t


def train_evaluator(train: ImageData, test: ImageData, device: torch.device, *,
                    epochs: int | None = None, batch_size: int = 128, lr: float = 2e-3
                    ) -> tuple[EvaluatorCNN, float]:
    """Adam with a one-cycle LR on the training split: cross-entropy on the class plus (where the
    data has factors) mean squared error on factor_targets; returns (model, held-out accuracy).
    epochs=None: 2, or enough for MIN_STEPS steps. Gradients are on whatever context the caller
    is in: an eval path under torch.no_grad (or inference_mode) may be the first to need it."""
    with torch.inference_mode(False), torch.enable_grad():
        return _train_evaluator(train, test, device, epochs, batch_size, lr)


def _train_evaluator(train: ImageData, test: ImageData, device: torch.device,
                     epochs: int | None, batch_size: int, lr: float) -> tuple[EvaluatorCNN, float]:
    if epochs is None:
        epochs = max(2, -(-MIN_STEPS * batch_size // len(train)))
    targets = factor_targets(train)
    n_factors = 0 if targets is None else targets.shape[1]
    model = EvaluatorCNN(train.shape[0], train.num_classes, n_factors=n_factors).to(device)
    steps = epochs * max(1, len(train) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    for _ in range(epochs):
        model.train()
        for x, y, t in _batches(train, targets, batch_size, device):
            features = model.features(_noisy(x))
            loss = F.cross_entropy(model.head(features), y)
            if t is not None:
                loss = loss + F.mse_loss(model.factor_head(features), t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    x, y = test.first(len(test))
    return model, float((predict(model, x)[1] == y).float().mean())


def _as_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of uint8 or [-1, 1] images as float [-1, 1] on the device."""
    x = images.to(device)
    return to_float(x) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def predict(model: EvaluatorCNN, images: torch.Tensor, batch_size: int = 500):
    """(features (N, 128) float64 numpy, predicted classes, class probabilities (N, K) float64
    numpy) for uint8 or [-1, 1] images."""
    device = next(model.parameters()).device
    model.eval()
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f = model.features(_as_float(images[i:i + batch_size], device))
        feats.append(f.double().cpu())
        probs.append(model.head(f).float().softmax(1).double().cpu())
    probs = torch.cat(probs)
    return torch.cat(feats).numpy(), probs.argmax(1), probs.numpy()


def get_evaluator(dataset: str, image_size: int, channels: int, device: torch.device, *,
                  save_root=".", data_root="data", seed: int = 0, epochs: int | None = None,
                  n_train: int | None = None) -> tuple[EvaluatorCNN, dict]:
    """The cached evaluator for (dataset, size, channels), trained and saved on first use."""
    path = evaluator_path(save_root, dataset, image_size, channels, data_root)
    if path.is_file():
        try:
            state = load_checkpoint(path, "evaluator")
        except UserError as err:  # a cache written by an older version: train it again
            print(f"{err}; retraining the evaluator")
            state = None
        if state is not None and state["info"].get("recipe") != RECIPE:
            print(f"the cached evaluator {path} was trained by an older recipe; retraining it")
        elif state is not None:
            model = EvaluatorCNN(**state["model_args"]).to(device)
            load_state(model, state["model"], "evaluator")
            return model, state["info"]
    kwargs = dict(image_size=image_size, channels=channels, root=data_root, seed=seed)
    train = load_dataset(dataset, "train", n=n_train, **kwargs)
    test = load_dataset(dataset, "test", **kwargs)
    print(f"training the {dataset} evaluator classifier once (cached at {path})")
    started = time.perf_counter()
    model, accuracy = train_evaluator(train, test, device, epochs=epochs)
    print(f"evaluator trained in {time.perf_counter() - started:.0f} s: held-out accuracy "
          f"{accuracy:.3f} on {len(test)} images")
    info = {"dataset": dataset, "image_size": image_size, "channels": channels,
            "test_accuracy": accuracy, "test_images": len(test), "train_images": len(train),
            "recipe": RECIPE}
    threshold = THRESHOLDS.get(dataset)
    if threshold and accuracy < threshold:
        print(f"warning: the {dataset} evaluator reached {accuracy:.3f} held-out accuracy, "
              f"below {threshold}; its features are weaker")
    save_checkpoint({"version": CHECKPOINT_VERSION, "kind": "evaluator",
                     "model": model.state_dict(), "info": info, "config": info,
                     "model_args": {"channels": channels, "num_classes": train.num_classes,
                                    "n_factors": model.factor_head.out_features
                                    if model.factor_head is not None else 0}},
                    path)
    return model, info


def class_accuracy(images: torch.Tensor, labels: torch.Tensor, dataset: str,
                   device: torch.device, *, save_root=".", data_root="data", seed: int = 0
                   ) -> float:
    """The share of uint8 or [-1, 1] images the dataset's evaluator classifier puts in their
    labelled class (for example an autoencoder's reconstructions: what its latents keep)."""
    evaluator, _ = get_evaluator(dataset, images.shape[-1], images.shape[1], device,
                                 save_root=save_root, data_root=data_root, seed=seed)
    return float((predict(evaluator, images)[1] == labels.cpu()).float().mean())


def inception_features(images: torch.Tensor, device: torch.device) -> np.ndarray:
    """2048-d pool features of torchvision's ImageNet Inception-v3 (opt-in; needs its weights)."""
    from torchvision.models import Inception_V3_Weights, inception_v3
    try:
        net = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1).to(device).eval()
    except Exception as err:  # offline and not cached: one clear line
        raise UserError("EXTRACTOR='inception' needs torchvision's Inception-v3 ImageNet weights "
                        f"(download failed: {type(err).__name__}); use EXTRACTOR='evaluator'"
                        ) from None
    net.fc = torch.nn.Identity()
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)  # ImageNet
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 100):
            x = _as_float(images[i:i + 100], device).add(1).div(2)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(net((x - mean) / std).double().cpu())
    return torch.cat(out).numpy()


def _scores(fake: np.ndarray, real: np.ndarray) -> dict:
    n = min(len(fake), len(real))  # subsets of half the samples, so they differ (at most 1000)
    kid, kid_std = kernel_inception_distance(fake, real, subsets=50,
                                             subset_size=min(1000, max(2, n // 2)))
    precision, recall = precision_recall(real, fake)
    return {"fid": frechet_distance(*feature_statistics(fake), *feature_statistics(real)),
            "kid": kid, "kid_std": kid_std, "precision": precision, "recall": recall}


def evaluate_samples(images: torch.Tensor, labels: torch.Tensor | None, dataset: str,
                     device: torch.device, *, extractor: str = "evaluator", save_root=".",
                     data_root="data", seed: int = 0, figure: Path | None = None) -> dict:
    """Scores of uint8 (N, C, H, W) samples against as many held-out real images, and the same
    scores between that real set and as many training images (the floor); `figure`: where to
    draw the samples in a row per class (utils.plots.class_rows)."""
    if extractor not in EXTRACTORS:
        raise UserError(f"EXTRACTOR={extractor!r} is not one of {EXTRACTORS}")
    size, channels = images.shape[-1], images.shape[1]
    evaluator, info = get_evaluator(dataset, size, channels, device, save_root=save_root,
                                    data_root=data_root, seed=seed)
    kwargs = dict(image_size=size, channels=channels, root=data_root, seed=seed)
    test = load_dataset(dataset, "test", **kwargs)
    n = min(len(images), len(test))
    if n < 10:
        raise UserError(f"need at least 10 samples to score, got {n}")
    real = test.first(n)[0]
    train = load_dataset(dataset, "train", n=n, **kwargs).first(n)[0]
    (fake_f, fake_cls, fake_p), (real_f, _, real_p), (train_f, _, train_p) = (
        predict(evaluator, x) for x in (images[:n], real, train))
    name = f"evaluator CNN ({dataset}, held-out accuracy {info['test_accuracy']:.3f})"
    if extractor == "inception":
        fake_f, real_f, train_f = (inception_features(x, device) for x in (images[:n], real,
                                                                            train))
        name = "Inception-v3 pool3 (ImageNet weights)"
    result = {"extractor": name, "samples": n, "real_images": n, **_scores(fake_f, real_f),
              "real_vs_real": _scores(train_f, real_f)}
    if labels is not None:
        result["class_accuracy"] = float((fake_cls == labels[:n].cpu()).float().mean())
    if test.num_classes > 1:  # which classes the evaluator sees in the samples, how surely
        result["classes"] = class_balance(fake_p, real_p, test.class_names)
        floor = class_balance(train_p, real_p, test.class_names)
        result["real_vs_real"]["class_total_variation"] = floor["total_variation"]
        if figure is not None:
            save_class_rows(images[:n], fake_p, test.class_names, figure,
                            None if labels is None else labels[:n])
    if channels == 3:  # do the samples draw the data's colours?
        result["hue"] = hue_histograms(_as_float(images[:n], torch.device("cpu")).numpy(),
                                       real.numpy())
        result["real_vs_real"]["hue_total_variation"] = hue_histograms(
            train.numpy(), real.numpy())["total_variation"]  # its floor at this sample count
    return result


def write_metrics(images: torch.Tensor, labels: torch.Tensor | None, dataset: str, out: Path,
                  device: torch.device, *, extractor: str, save_root, data_root,
                  seed: int = 0, sampling: dict | None = None) -> dict:
    """evaluate_samples into out/metrics.json, with a one-line summary printed; `sampling`
    (how the samples were drawn and their ms_per_image) is stored beside the scores, and the
    run's TensorBoard log (out's parent is the run's folder) gets them as final metrics."""
    result = evaluate_samples(images, labels, dataset, device, extractor=extractor,
                              save_root=save_root, data_root=data_root, seed=seed,
                              figure=out / "samples_by_class.png")
    if sampling:
        result["sampling"] = sampling
    write_json(out / "metrics.json", result)
    if "hue" in result:
        save_hue_histogram(result["hue"], out / "hue_histogram.png")
    log_final_metrics(out.parent, result)
    floor = result["real_vs_real"]
    accuracy = (f", class accuracy {result['class_accuracy']:.3f}"
                if "class_accuracy" in result else "")
    if "classes" in result:
        accuracy += (f", class mix total variation {result['classes']['total_variation']:.2f} "
                     f"(real vs real {floor['class_total_variation']:.2f}), "
                     f"{result['classes']['confident']:.0%} classified with p >= 0.9")
    if "hue" in result:
        accuracy += (f", hue coverage {result['hue']['coverage']:.2f} (total variation "
                     f"{result['hue']['total_variation']:.2f}, real vs real "
                     f"{floor.get('hue_total_variation', float('nan')):.2f})")
    print(f"{result['samples']} samples, {result['extractor']}: FID {result['fid']:.2f} "
          f"(real vs real {floor['fid']:.2f}), KID {result['kid']:.4f} +- {result['kid_std']:.4f}"
          f", precision {result['precision']:.3f}, recall {result['recall']:.3f}{accuracy}"
          + (f"; sampling {sampling['ms_per_image']:.1f} ms/img" if sampling else ""))
    return result

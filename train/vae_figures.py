"""What a trained beta-VAE shows: reconstructions, prior samples, latent traversals, and which
latent captures which ground-truth factor (MIG, Chen et al. 2018; SAP, Kumar et al. 2018; DCI,
Eastwood & Williams 2018): the traversal rows are labelled with the factor each latent
captures best and its score, a per-factor panel traverses the best latent of every factor, the
mutual information of every latent with every factor is drawn as a heat map, and a circular
factor (hue) held as the angle of a latent pair is traversed around and along that pair."""
import math
from pathlib import Path

import numpy as np
import torch

from models.vae import VAE, active_dims
from train.inference import posterior_means
from utils.data import ImageData
from utils.metrics import (dci_score, discretize, entropy, mutual_information,
                           mutual_information_gap, polar_pair, sap_score)
from utils.plots import save_grid, save_heatmap, save_labelled_grid
from utils.runs import write_json
from utils.shapes import CIRCULAR_FACTORS

MIG_IMAGES = 2000  # held-out images whose posterior means are scored


@torch.no_grad()
def decode(model: VAE, z: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model.decode(z.to(device)).float().clamp(-1, 1).cpu()


def save_reconstructions(model: VAE, x: torch.Tensor, path: Path, title: str) -> Path:
    """Originals (top row) over reconstructions decoded from the posterior means."""
    recon = decode(model, posterior_means(model, x))
    return save_labelled_grid(torch.stack([x.cpu(), recon]), path,
                              ["original", "reconstruction"], title=title)


def factor_report(model: VAE, data: ImageData) -> dict | None:
    """MIG, SAP and DCI of the posterior means against the data's ground-truth factors.

    shapes has its generative factors; a labelled data set without them (digits) is scored
    against the class label alone. Returns None when there is nothing to score against.
    """
    x, labels = data.first(MIG_IMAGES)
    if data.factors:
        names = list(data.factors)
        factors = np.stack([np.asarray(data.factors[k][:len(x)], float) for k in names], 1)
    elif labels.numel():
        names, factors = ["class"], labels.numpy()[:, None].astype(float)
    else:
        return None
    latents = posterior_means(model, x).numpy()
    report = mutual_information_gap(latents, factors, names)
    sap = sap_score(latents, factors, names)
    dci = dci_score(latents, factors, names)
    report.update(sap=sap["sap"], sap_factors=sap["factors"], dci=dci["disentanglement"],
                  dci_completeness=dci["completeness"],
                  dci_informativeness=dci["informativeness"], dci_factors=dci["factors"],
                  images=len(x), polar=polar_codes(latents, factors, names, report))
    return report


def polar_codes(latents: np.ndarray, factors: np.ndarray, names: list[str], report: dict
                ) -> list[dict]:
    """Circular factors (CIRCULAR_FACTORS) that the angle of a pair of active latents carries
    better than any single latent does (normalised MI as in MIG). Each entry: factor, pair,
    centre (of the pair's circle), normalized_mi, single_mi (the best single latent's),
    resultant, sign, offset, radius_range (the radius's 2nd and 98th percentiles over the
    images) and radius_factors: the other factors the radius carries better than any single
    latent ({factor, mi, single_mi}, most informative first; the best one if none does)."""
    single = {f["factor"]: max(f["normalized_mi"]) for f in report["factors"]}
    active = active_dims(torch.from_numpy(latents)).nonzero().flatten().tolist()
    found, codes = [], discretize(factors).T
    for k, name in enumerate(names):
        if name not in CIRCULAR_FACTORS or name not in single:
            continue
        polar = polar_pair(latents, factors[:, k], active)
        if polar is None or polar["normalized_mi"] <= single[name]:
            continue
        radius_range = np.quantile(polar["radius"], [0.02, 0.98]).tolist()
        r = discretize(polar.pop("radius")[:, None])[:, 0]
        radius = sorted(({"factor": other, "mi": mutual_information(r, v) / entropy(v),
                          "single_mi": single[other]} for other, v in
                         zip(names, codes) if other != name and other in single),
                        key=lambda f: -f["mi"])
        found.append({"factor": name, **polar, "single_mi": single[name],
                      "radius_range": radius_range,
                      "radius_factors": [f for f in radius if f["mi"] > f["single_mi"]]
                      or radius[:1]})
    return found


def latent_names(report: dict | None) -> dict[int, str]:
    """latent index -> the factor(s) it captures best."""
    names: dict[int, list[str]] = {}
    for f in (report or {}).get("factors", []):
        names.setdefault(f["best_latent"], []).append(f"{f['factor']} (MIG {f['mig']:.2f})")
    return {i: ", ".join(v) for i, v in names.items()}


def save_factor_traversals(model: VAE, x: torch.Tensor, report: dict, path: Path,
                           n_values: int = 11, n_images: int = 3) -> Path | None:
    """For each ground-truth factor, the latent that captures it best (highest mutual
    information) traversed from -3 to +3 on n_images images: one row per (factor, image)."""
    factors = report.get("factors", [])
    if not factors:
        return None
    mu = posterior_means(model, x[:n_images])  # (N, D)
    values = traversal_values(n_values)
    rows, labels = [], []
    for f in factors:
        z = mu.unsqueeze(1).repeat(1, n_values, 1)
        z[:, :, f["best_latent"]] = values
        rows.append(decode(model, z.flatten(0, 1)).unflatten(0, (len(mu), n_values)))
        labels += [f"{f['factor']}: z{f['best_latent']} (MIG {f['mig']:.2f})"] + \
            [""] * (len(mu) - 1)
    return save_labelled_grid(torch.cat(rows), path, labels,
                              [f"{v:+.1f}" for v in values.tolist()],
                              title="each factor's best latent, traversed on "
                                    f"{len(mu)} images", xlabel="latent value (prior std)")


def save_polar_traversals(model: VAE, x: torch.Tensor, report: dict, path: Path,
                          n_values: int = 11, n_images: int = 3) -> Path | None:
    """For each circular factor held as the angle of a latent pair (report["polar"]): the pair
    turned through a full circle at each image's own radius (the columns are the factor's value
    the angle stands for, so the first and last match), then moved along the image's own
    angle over the radii the data uses (2nd to 98th percentile; the radius rows). Row labels
    give the normalised MI of the angle (radius) against the best single latent's, "a vs b"."""
    if not report.get("polar"):
        return None
    mu = posterior_means(model, x[:n_images])  # (N, D)
    u = torch.linspace(0, 1, n_values)
    rows, labels = [], []
    for p in report["polar"]:
        radius = torch.linspace(*p["radius_range"], n_values)
        (i, j), centre = p["pair"], torch.tensor(p["centre"])
        offset = mu[:, [i, j]] - centre  # (N, 2)
        own_r, own_psi = offset.norm(dim=1), torch.atan2(offset[:, 1], offset[:, 0])
        psi = p["offset"] + p["sign"] * 2 * math.pi * u  # (K,)
        turns = [own_r[:, None] * torch.cos(psi), own_r[:, None] * torch.sin(psi)]
        rays = [radius * torch.cos(own_psi)[:, None], radius * torch.sin(own_psi)[:, None]]
        for (dx, dy), what, score in [
                (turns, f"{p['factor']}: angle of (z{i}, z{j})",
                 f"MI {p['normalized_mi']:.2f} vs {p['single_mi']:.2f}"),
                (rays, f"{', '.join(f['factor'] for f in p['radius_factors'])}: radius of "
                       f"(z{i}, z{j}), {radius[0]:.1f} to {radius[-1]:.1f}",
                 ", ".join(f"MI {f['mi']:.2f} vs {f['single_mi']:.2f}"
                           for f in p["radius_factors"]))]:
            z = mu.unsqueeze(1).repeat(1, n_values, 1)
            z[:, :, i], z[:, :, j] = centre[0] + dx, centre[1] + dy
            rows.append(decode(model, z.flatten(0, 1)).unflatten(0, (len(mu), n_values)))
            labels += [f"{what}\n({score})"] + [""] * (len(mu) - 1)
    return save_labelled_grid(torch.cat(rows), path, labels, [f"{a:.1f}" for a in u.tolist()],
                              title="circular factors as the angle of a latent pair",
                              xlabel="angle rows: the factor's value (a full turn: the first and "
                                     "last match); radius rows: equal steps over the range")


def save_mi_matrix(report: dict, path: Path) -> Path | None:
    """The mutual information of every latent with every factor, divided by the factor's
    entropy (the matrix MIG is read from), as a heat map."""
    factors = report.get("factors", [])
    if not factors:
        return None
    matrix = np.array([f["normalized_mi"] for f in factors]).T  # (D, K)
    return save_heatmap(matrix, path, [f"z{i}" for i in range(len(matrix))],
                        [f["factor"] for f in factors],
                        title=f"I(z_i; v_k) / H(v_k): MIG {report['mig']:.3f}",
                        value_label="normalised mutual information")


def traversal_values(n: int, limit: float = 3.0) -> torch.Tensor:
    """n values from -limit to +limit prior standard deviations (the prior is N(0, 1))."""
    return torch.linspace(-limit, limit, n)


def save_traversal_all_dims(model: VAE, x: torch.Tensor, kl_dims: list[float], dims: list[int],
                            path: Path, n_values: int = 11, report: dict | None = None,
                            title: str = "") -> Path:
    """One image; a row per latent in `dims` (ordered by KL), set to -3 ... +3 in turn while the
    other latents keep the image's posterior mean."""
    mu = posterior_means(model, x[:1])[0]  # (D,)
    values = traversal_values(n_values)
    names = latent_names(report)
    dims = sorted(dims, key=lambda i: -kl_dims[i])
    z = mu.repeat(len(dims), n_values, 1)  # (R, K, D)
    for row, i in enumerate(dims):
        z[row, :, i] = values
    images = decode(model, z.flatten(0, 1)).unflatten(0, (len(dims), n_values))
    labels = [f"z{i} KL {kl_dims[i]:.2f}" + (f"\n{names[i]}" if i in names else "")
              for i in dims]
    return save_labelled_grid(images, path, labels, [f"{v:+.1f}" for v in values.tolist()],
                              title=title, xlabel="latent value (prior std)")


def save_traversal_one_dim(model: VAE, x: torch.Tensor, dim: int, path: Path,
                           n_values: int = 11, label: str = "", title: str = "") -> Path:
    """One latent, several images as rows, set to -3 ... +3 from each image's posterior mean."""
    mu = posterior_means(model, x)  # (N, D)
    values = traversal_values(n_values)
    z = mu.unsqueeze(1).repeat(1, n_values, 1)  # (N, K, D)
    z[:, :, dim] = values
    images = decode(model, z.flatten(0, 1)).unflatten(0, (len(x), n_values))
    return save_labelled_grid(images, path, [f"image {i}" for i in range(len(x))],
                              [f"{v:+.1f}" for v in values.tolist()],
                              title=title or f"traversal of z{dim} {label}",
                              xlabel=f"z{dim} (prior std)")


def write_vae_figures(model: VAE, test: ImageData, kl_dims: list[float], out: Path, title: str,
                      *, n_images: int = 8, n_values: int = 11, seed: int = 0,
                      dim: int | None = None) -> dict:
    """Reconstructions, prior samples, the traversals (all latents of one image, each factor's
    best latent, polar pairs, one latent over several images), the MI heat map and the
    MIG/SAP/DCI report (also written to out/report.json with the active dims ordered by KL and
    the KL per latent); returns the report. `dim` picks the single-latent traversal (default:
    the largest-KL active latent)."""
    model.eval()
    x, _ = test.first(max(n_images, 1))
    save_reconstructions(model, x, out / "reconstructions.png", f"{title}: reconstructions")
    z = torch.randn(64, model.latent_dim, generator=torch.Generator().manual_seed(seed))
    save_grid(decode(model, z), out / "prior_samples.png", nrow=8,
              title=f"{title}: decoded z ~ N(0, I)")
    mu = posterior_means(model, test.first(MIG_IMAGES)[0])
    active = active_dims(mu).nonzero().flatten().tolist()
    report = factor_report(model, test) or {"mig": None, "factors": []}
    report["active_dims"] = sorted(active, key=lambda i: -kl_dims[i])
    shown = report["active_dims"] or sorted(range(model.latent_dim), key=lambda i: -kl_dims[i])
    save_traversal_all_dims(model, x, kl_dims, shown, out / "traversal_dims.png", n_values,
                            report, f"{title}: latent traversals of one image "
                            f"({len(active)} active dims, by KL)")
    save_factor_traversals(model, x, report, out / "factor_traversals.png", n_values)
    save_mi_matrix(report, out / "mi_matrix.png")
    save_polar_traversals(model, x, report, out / "polar_traversals.png", n_values)
    dim = shown[0] if dim is None else dim
    save_traversal_one_dim(model, x, dim, out / f"traversal_z{dim}.png", n_values,
                           latent_names(report).get(dim, ""))
    report["kl_dims"] = list(kl_dims)
    write_json(out / "report.json", report)
    return report

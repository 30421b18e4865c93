"""Numbers that compare models: disentanglement (the Mutual Information Gap, Chen et al. 2018; the
Separated Attribute Predictability score, Kumar et al. 2018) and
sample quality on feature vectors (Frechet distance, KID, improved precision and recall)."""
from typing import Sequence

import numpy as np


def discretize(values: np.ndarray, bins: int = 20) -> np.ndarray:
    """Each column into `bins` equal-width bins over its range (integer codes, (N, K)).

    A column with at most `bins` distinct values (a categorical factor) keeps one code per value.
    """
    values = np.asarray(values, dtype=np.float64)
    codes = np.zeros(values.shape, dtype=np.int64)
    for j in range(values.shape[1]):
        column = values[:, j]
        distinct = np.unique(column)
        if len(distinct) <= bins:
            codes[:, j] = np.searchsorted(distinct, column)
        else:
            edges = np.histogram_bin_edges(column, bins)
            codes[:, j] = np.digitize(column, edges[1:-1])
    return codes


def entropy(codes: np.ndarray) -> float:
    """Shannon entropy (nats) of one column of integer codes."""
    p = np.bincount(codes) / len(codes)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats from the joint histogram of two integer code columns."""
    joint = np.bincount(a * (b.max() + 1) + b).astype(np.float64) / len(a)
    pa = np.bincount(a) / len(a)
    pb = np.bincount(b) / len(b)
    idx = np.nonzero(joint)[0]
    ia, ib = np.divmod(idx, b.max() + 1)
    return float((joint[idx] * np.log(joint[idx] / (pa[ia] * pb[ib]))).sum())


def mutual_information_gap(latents: np.ndarray, factors: np.ndarray,
                           factor_names: Sequence[str] = (), bins: int = 20) -> dict:
    """MIG = mean over factors k of (I(z_a; v_k) - I(z_b; v_k)) / H(v_k), with z_a, z_b the two
    latents most informative about v_k (Chen et al. 2018, eq. 6; discretised as in Locatello
    et al. 2019). Factors without entropy (constant in the data) are left out.

    Returns {"mig", "factors": [{"factor", "mig", "best_latent", "normalized_mi"}], "mi"}.
    """
    z, v = discretize(latents, bins), discretize(factors, bins)
    names = list(factor_names) or [f"factor{k}" for k in range(v.shape[1])]
    mi = np.array([[mutual_information(z[:, i], v[:, k]) for k in range(v.shape[1])]
                   for i in range(z.shape[1])])  # (D, K)
    per_factor = []
    for k, name in enumerate(names):
        h = entropy(v[:, k])
        if h <= 1e-12:
            continue
        ranked = np.sort(mi[:, k])[::-1]
        second = ranked[1] if len(ranked) > 1 else 0.0
        per_factor.append({"factor": name, "mig": float((ranked[0] - second) / h),
                           "best_latent": int(np.argmax(mi[:, k])),
                           "normalized_mi": (mi[:, k] / h).tolist()})
    score = float(np.mean([f["mig"] for f in per_factor])) if per_factor else 0.0
    return {"mig": score, "factors": per_factor, "mi": mi.tolist()}


def sap_score(latents: np.ndarray, factors: np.ndarray, factor_names: Sequence[str] = (),
              max_classes: int = 20) -> dict:
    """SAP = mean over factors k of the gap between the two largest S[i, k], where S[i, k] says
    how well latent i alone predicts factor k (Kumar et al. 2018, section 4): for a continuous
    factor the R^2 of a linear fit (the squared correlation), for a categorical one (at most
    max_classes values) the share of the latent's variance explained by the class (eta^2, the
    R^2 of regressing the latent on the one-hot class). Constant factors are left out.

    Returns {"sap", "factors": [{"factor", "sap", "best_latent"}], "scores": S (D, K)}.
    """
    z = np.asarray(latents, dtype=np.float64)
    v = np.asarray(factors, dtype=np.float64)
    names = list(factor_names) or [f"factor{k}" for k in range(v.shape[1])]
    z_var = z.var(0)
    scores = np.zeros((z.shape[1], v.shape[1]))
    for k in range(v.shape[1]):
        column = v[:, k]
        values = np.unique(column)
        if len(values) <= max_classes:  # eta^2 = var(E[z | class]) / var(z)
            codes = np.searchsorted(values, column)
            counts = np.bincount(codes)[:, None]
            means = np.stack([np.bincount(codes, z[:, i]) for i in range(z.shape[1])], 1) / counts
            explained = (counts * (means - z.mean(0)) ** 2).sum(0) / len(z)
        else:  # squared correlation
            cov = ((z - z.mean(0)) * (column - column.mean())[:, None]).mean(0)
            explained = cov ** 2 / max(column.var(), 1e-300)
        scores[:, k] = np.where(z_var > 1e-12, explained / np.maximum(z_var, 1e-300), 0.0)
    per_factor = []
    for k, name in enumerate(names):
        if v[:, k].var() <= 1e-12:
            continue
        ranked = np.sort(scores[:, k])[::-1]
        second = ranked[1] if len(ranked) > 1 else 0.0
        per_factor.append({"factor": name, "sap": float(ranked[0] - second),
                           "best_latent": int(np.argmax(scores[:, k]))})
    score = float(np.mean([f["sap"] for f in per_factor])) if per_factor else 0.0
    return {"sap": score, "factors": per_factor, "scores": scores.tolist()}


# Sample quality: Frechet distance, KID, precision/recall (on features of an evaluator network)

def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64 (Heusel et al. 2017).

    A singular product gets eps * I added to both covariances; the tiny imaginary part that
    sqrtm can return from round-off is dropped (an error if it is not tiny).
    """
    import warnings

    from scipy import linalg
    mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
    s1, s2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
    with warnings.catch_warnings():  # a singular product is handled just below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary part {np.abs(covmean.imag).max()}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean), 0.0))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of (N, D) features, float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def kernel_inception_distance(x: np.ndarray, y: np.ndarray, subsets: int = 50,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / d + 1)^3, averaged over random subsets
    (Binkowski et al. 2018); returns (mean, std over subsets)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(x), len(y))
    d = x.shape[1]
    values = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        k_aa, k_bb, k_ab = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3,
                            (a @ b.T / d + 1) ** 3)
        mmd = ((k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
               + (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1)) - 2 * k_ab.mean())
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def _kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    distances = np.sqrt(np.maximum(_squared_distances(x, x), 0))
    return np.sort(distances, axis=1)[:, k]  # column 0 is the point itself


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): the share of fake samples inside
    the real manifold (union of balls reaching each real point's k-th nearest real neighbour),
    and the share of real samples inside the fake manifold."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def inside(points, support):
        radius = _kth_neighbour_radius(support, k)
        d = np.sqrt(np.maximum(_squared_distances(points, support), 0))
        return float((d <= radius[None]).any(axis=1).mean())
    return inside(fake, real), inside(real, fake)


def pixel_hues(images: np.ndarray, min_saturation: float = 0.3, min_value: float = 0.2
               ) -> np.ndarray:
    """The HSV hue in [0, 1) of every coloured pixel of RGB images in [-1, 1], (N, 3, H, W):
    pixels with saturation (max - min) / max and value max at least the thresholds (greys,
    black and dark pixels have no meaningful hue). Hue by the hexcone formula (Smith 1978):
    red 0, yellow 1/6, green 1/3, cyan 1/2, blue 2/3, magenta 5/6."""
    rgb = (np.moveaxis(np.asarray(images, dtype=np.float64), 1, -1).reshape(-1, 3) + 1) / 2
    high, low = rgb.max(1), rgb.min(1)
    delta = high - low
    keep = (high >= min_value) & (delta >= min_saturation * np.maximum(high, 1e-12)) & (delta > 0)
    r, g, b = rgb[keep].T
    high, delta = high[keep], delta[keep]
    hue = np.where(high == r, (g - b) / delta, np.where(high == g, 2 + (b - r) / delta,
                                                         4 + (r - g) / delta))
    return (hue / 6.0) % 1.0


def hue_histograms(fake: np.ndarray, real: np.ndarray, bins: int = 12) -> dict:
    """Compare the hues of two image sets: the share of coloured pixels in each of `bins` equal
    hue sectors for both, their total variation distance (1/2 sum |p - q|: 0 for the same
    histogram, 1 for disjoint ones), and the coverage: the share of the hue sectors the real
    images use (at least half the uniform share) in which the samples have at least half the
    real share. A model that draws every hue of the data covers 1.0."""
    def histogram(images):
        hues = pixel_hues(images)
        counts = np.bincount(np.minimum((hues * bins).astype(int), bins - 1), minlength=bins)
        return counts / max(counts.sum(), 1)
    p, q = histogram(fake), histogram(real)
    used = q >= 0.5 / bins
    covered = used & (p >= 0.5 * q)
    return {"bins": bins, "fake": p.tolist(), "real": q.tolist(),
            "total_variation": float(0.5 * np.abs(p - q).sum()),
            "coverage": float(covered.sum() / max(used.sum(), 1))}

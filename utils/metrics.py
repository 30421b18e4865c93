"""Numbers that compare models: disentanglement (the Mutual Information Gap, Chen et al. 2018; the
Separated Attribute Predictability score, Kumar et al. 2018; DCI, Eastwood & Williams 2018; the
latent pair whose angle codes a circular factor) and
sample quality on feature vectors (Frechet distance, KID, improved precision and recall)."""
from typing import Sequence

import numpy as np
from scipy.optimize import minimize


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


def polar_pair(latents: np.ndarray, factor: np.ndarray, candidates: Sequence[int],
               bins: int = 20) -> dict | None:
    """The pair of latents whose angle carries a circular factor best (values on one period
    [0, 1), as hue: 0 and 1 are the same colour).

    One latent cannot hold a circle without a cut; with an isotropic Gaussian prior a VAE can
    hold it as the angle of two latents around a centre, which costs no total correlation (a
    Gaussian's angle and radius are independent). For each pair (i, j) of `candidates`, the
    angle psi = atan2(z_j - c_j, z_i - c_i) around the pair's mean c is fitted to the factor by
    its mean resultant |E exp(i(psi - s 2 pi v))| at the better orientation s = +-1 (1 when
    the angle is the factor up to a turn), and the value it then reads, (s (psi - offset) /
    2 pi) mod 1, is scored like a latent in MIG: I(read; v) / H(v), both binned. The best
    pair's centre is then moved to where the resultant is largest (Nelder-Mead from the mean).
    Returns {"pair", "centre", "normalized_mi", "resultant", "sign" s, "offset" (the angle of
    factor value 0), "radius" (each image's distance from the centre)}; None with fewer than
    two candidates.
    """
    candidates = list(candidates)
    factor = np.asarray(factor, np.float64)
    v = discretize(factor[:, None], bins)[:, 0]
    h = entropy(v)

    def phase(i: int, j: int, centre: np.ndarray) -> tuple[np.ndarray, int, complex]:
        """The pair's angles around centre, the better orientation and its mean phase."""
        psi = np.arctan2(latents[:, j] - centre[1], latents[:, i] - centre[0])
        phases = {s: np.mean(np.exp(1j * (psi - s * 2 * np.pi * factor))) for s in (1, -1)}
        sign = max(phases, key=lambda s: abs(phases[s]))
        return psi, sign, phases[sign]

    def fit(i: int, j: int, centre: np.ndarray) -> dict:
        psi, sign, mean_phase = phase(i, j, centre)
        offset = float(np.angle(mean_phase))
        read = np.mod(sign * (psi - offset) / (2 * np.pi), 1.0)  # binned like the factor
        score = mutual_information(discretize(read[:, None], bins)[:, 0], v) / h \
            if h > 1e-12 else 0.0
        return {"pair": [int(i), int(j)], "centre": [float(c) for c in centre],
                "normalized_mi": float(score), "resultant": float(abs(mean_phase)),
                "sign": sign, "offset": offset}

    fits = [fit(i, j, latents[:, [i, j]].mean(0)) for a, i in enumerate(candidates)
            for j in candidates[a + 1:]]
    if not fits:
        return None
    i, j = max(fits, key=lambda f: f["normalized_mi"])["pair"]
    best = minimize(lambda c: -abs(phase(i, j, c)[2]), latents[:, [i, j]].mean(0),
                    method="Nelder-Mead")
    found = fit(i, j, best.x)
    return {**found, "radius": np.hypot(latents[:, i] - best.x[0], latents[:, j] - best.x[1])}


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


def dci_from_importance(importance: np.ndarray) -> dict:
    """Disentanglement and completeness (Eastwood & Williams 2018, section 3) of an importance
    matrix R (D latents x K factors), R[i, k] >= 0 how much latent i is used to predict factor k.

    Disentanglement of latent i: D_i = 1 - H_K(P_i.), P_ik = R_ik / sum_k R_ik (entropy in base
    K); overall D = sum_i rho_i D_i with rho_i = sum_k R_ik / sum_ik R_ik, so unused latents do
    not count. Completeness of factor k: C_k = 1 - H_D(P~_.k), P~_ik = R_ik / sum_i R_ik (base D),
    overall C = the mean over factors with any importance.
    """
    r = np.clip(np.asarray(importance, dtype=np.float64), 0.0, None)
    n_latents, n_factors = r.shape

    def one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:  # rows of p sum to 1
        logs = np.log(np.where(p > 0, p, 1.0))
        return 1.0 - (-(p * logs).sum(1)) / np.log(max(base, 2))

    latent_total, factor_total = r.sum(1), r.sum(0)
    used, covered = latent_total > 0, factor_total > 0
    d_i = np.zeros(n_latents)
    d_i[used] = one_minus_entropy(r[used] / latent_total[used, None], n_factors)
    c_k = np.zeros(n_factors)
    c_k[covered] = one_minus_entropy((r[:, covered] / factor_total[covered]).T, n_latents)
    rho = latent_total / max(r.sum(), 1e-300)
    return {"disentanglement": float((rho * d_i).sum()),
            "completeness": float(c_k[covered].mean()) if covered.any() else 0.0,
            "latent_disentanglement": d_i.tolist(), "factor_completeness": c_k.tolist()}


def dci_score(latents: np.ndarray, factors: np.ndarray, factor_names: Sequence[str] = (),
              max_classes: int = 20, train_fraction: float = 0.8, seed: int = 0) -> dict:
    """DCI (Eastwood & Williams 2018): for each factor a random forest (the paper's second
    regressor) predicts it from all latents, trained on the first train_fraction of the rows;
    its impurity importances are the factor's column of R, scored by dci_from_importance.
    Informativeness: the held-out accuracy (a factor with at most max_classes values, a
    classifier) or R^2 (a regressor), averaged over factors. Constant factors are left out.

    Returns {"disentanglement", "completeness", "informativeness", "factors": [{"factor",
    "completeness", "informativeness", "best_latent"}], "importance": R (D, K)}.
    """
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    z = np.asarray(latents, dtype=np.float64)
    v = np.asarray(factors, dtype=np.float64)
    names = list(factor_names) or [f"factor{k}" for k in range(v.shape[1])]
    keep = [k for k in range(v.shape[1]) if v[:, k].var() > 1e-12]
    split = int(len(z) * train_fraction)
    importance = np.zeros((z.shape[1], len(keep)))
    informativeness = []
    for j, k in enumerate(keep):
        categorical = len(np.unique(v[:, k])) <= max_classes
        forest = (RandomForestClassifier if categorical else RandomForestRegressor)(
            n_estimators=50, min_samples_leaf=10, random_state=seed)
        forest.fit(z[:split], v[:split, k])
        importance[:, j] = forest.feature_importances_
        informativeness.append(float(forest.score(z[split:], v[split:, k])))
    out = dci_from_importance(importance)
    per_factor = [{"factor": names[k], "completeness": out["factor_completeness"][j],
                   "informativeness": informativeness[j],
                   "best_latent": int(np.argmax(importance[:, j]))} for j, k in enumerate(keep)]
    return {"disentanglement": out["disentanglement"], "completeness": out["completeness"],
            "informativeness": float(np.mean(informativeness)) if keep else 0.0,
            "factors": per_factor, "importance": importance.tolist()}


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


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """The total variation distance 1/2 sum |p - q| of two discrete distributions: 0 for the
    same one, 1 for disjoint ones."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


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
            "total_variation": total_variation(p, q),
            "coverage": float(covered.sum() / max(used.sum(), 1))}


def class_balance(fake_probs: np.ndarray, real_probs: np.ndarray, names: Sequence[str],
                  confident: float = 0.9) -> dict:
    """What a classifier of the data's classes makes of unlabelled samples, from its softmax
    outputs (N, K) for the samples and for real images: the share of each set it puts in each
    class (its argmax), their total variation distance (1/2 sum |p - q|: 0 when the samples
    draw the data's mix of classes, 1 when they draw none of them), and the share of each set
    it puts in one class with probability at least `confident`. A proxy for "a person can
    name the shapes", in the spirit of the Inception Score (Salimans et al. 2016): shapeless
    blobs land in whichever class they resemble, so they skew the mix and lower the share."""
    def shares(probs):
        return np.bincount(np.asarray(probs).argmax(1), minlength=len(names)) / max(len(probs), 1)

    p, q = shares(fake_probs), shares(real_probs)
    return {"names": list(names), "fake": p.tolist(), "real": q.tolist(),
            "total_variation": total_variation(p, q),
            "confident": float((np.asarray(fake_probs).max(1) >= confident).mean()),
            "real_confident": float((np.asarray(real_probs).max(1) >= confident).mean())}

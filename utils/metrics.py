"""Numbers that compare models. Disentanglement: the Mutual Information Gap (Chen et al. 2018)."""
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

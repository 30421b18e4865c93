"""The embedded `shapes` dataset: procedurally rendered sprites with exact ground-truth factors.

Each image is one filled shape on a plain background. The factors are drawn independently:
shape (the class), hue, scale, rotation, x and y position, and optionally background brightness.
Rendering is vectorised in torch: every pixel of a 4x supersampled canvas is tested against
its shape, then the canvas is average-pooled, which anti-aliases the edges.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

SHAPE_NAMES = ("circle", "square", "triangle", "star")
FACTOR_NAMES = ("shape", "hue", "scale", "rotation", "pos_x", "pos_y", "background")
CIRCULAR_FACTORS = ("hue", "rotation")  # fractions of one period: 0 and 1 are the same value
# Rotational symmetry of each shape: rotation is drawn within one period so it stays identifiable.
_SYMMETRY = {"circle": 1, "square": 4, "triangle": 3, "star": 5}
_SUPERSAMPLE = 4
_RADIUS_RANGE = (0.3, 0.6)  # circumradius as a fraction of the half-width of the image
_STAR_INNER = 0.45  # inner radius of the star relative to its outer radius
HUE_ARC = 0.7  # `shapes-arc`: hues drawn from [0, HUE_ARC) of the colour circle (red to blue)


def sample_factors(n: int, seed: int, background: bool = False, hue_max: float = 1.0
                   ) -> dict[str, np.ndarray]:
    """Draw n independent factor vectors; every continuous factor is uniform on its range.

    Hue is a fraction of the colour circle: with hue_max = 1 it covers the whole circle, where
    hue 0 and hue 1 are the same red (a circular factor); below 1 it is an interval.
    """
    rng = np.random.default_rng(seed)
    r_max = _RADIUS_RANGE[1]
    factors = {
        "shape": rng.integers(0, len(SHAPE_NAMES), n),
        "hue": rng.uniform(0.0, hue_max, n),
        "scale": rng.uniform(*_RADIUS_RANGE, n),
        "rotation": rng.uniform(0.0, 1.0, n),  # fraction of the shape's symmetry period
        "pos_x": rng.uniform(-(1 - r_max), 1 - r_max, n),
        "pos_y": rng.uniform(-(1 - r_max), 1 - r_max, n),
        "background": rng.uniform(0.0, 0.5, n) if background else np.zeros(n),
    }
    factors["rotation"][factors["shape"] == SHAPE_NAMES.index("circle")] = 0.0
    return factors


def _hsv_to_rgb(hue: torch.Tensor) -> torch.Tensor:
    """Fully saturated, full-value colours for hues in [0, 1): (N,) -> (N, 3)."""
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=hue.dtype) + hue[:, None] * 6.0) % 6.0
    return 1.0 - torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _inside_star_polygon(px, py, n_vertices: int, radii: tuple[float, ...],
                         offset: float) -> torch.Tensor:
    """Inside test for a polygon star-shaped about the origin, vertex k at angle offset + 2*pi*k/n.

    Radii repeat cyclically (one value: regular polygon; two: a star). A point is inside when it
    lies on the origin's side of the edge of the angular sector that contains it.
    """
    c, s = math.cos(offset), math.sin(offset)
    px, py = c * px + s * py, -s * px + c * py  # rotate the point by -offset
    sector = 2 * math.pi / n_vertices
    k = (torch.atan2(py, px) % (2 * math.pi)).div_(sector).long().clamp_(max=n_vertices - 1)
    # Edge k joins vertices a (angle k*sector) and b ((k+1)*sector). The origin lies on its
    # inner side, so a point p is inside when n . p <= n . a, with n the edge's outward normal.
    angles = torch.arange(n_vertices + 1, dtype=torch.float64) * sector
    radius = torch.tensor([radii[i % len(radii)] for i in range(n_vertices + 1)],
                          dtype=torch.float64)
    ax, ay = radius * torch.cos(angles), radius * torch.sin(angles)
    nx, ny = (ay[1:] - ay[:-1]), -(ax[1:] - ax[:-1])
    limit = nx * ax[:-1] + ny * ay[:-1]
    table = torch.stack([nx, ny, limit]).to(px.dtype)  # (3, n_vertices)
    return table[0][k] * px + table[1][k] * py <= table[2][k]


def _coverage(factors: dict, start: int, stop: int, size: int) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of images start:stop, shape (B, 1, size, size)."""
    big = size * _SUPERSAMPLE
    coords = (torch.arange(big, dtype=torch.float32) + 0.5) / big * 2 - 1  # pixel centres
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    get = {k: torch.as_tensor(v[start:stop], dtype=torch.float32) for k, v in factors.items()}
    shape = torch.as_tensor(factors["shape"][start:stop])
    period = torch.tensor([2 * math.pi / _SYMMETRY[s] for s in SHAPE_NAMES])[shape]
    theta = (get["rotation"] * period)[:, None, None]
    dx = gx[None] - get["pos_x"][:, None, None]
    dy = -(gy[None] + get["pos_y"][:, None, None])  # y points up: positive pos_y is higher
    cos, sin = torch.cos(theta), torch.sin(theta)
    r = get["scale"][:, None, None]
    u, v = (cos * dx + sin * dy) / r, (-sin * dx + cos * dy) / r  # shape's own frame
    inside = torch.zeros_like(u, dtype=torch.bool)
    up, diagonal = math.pi / 2, math.pi / 4  # at rotation 0: a vertex points up; square upright
    tests = {
        "circle": lambda u, v: u * u + v * v <= 1.0,
        "square": lambda u, v: _inside_star_polygon(u, v, 4, (1.0,), diagonal),
        "triangle": lambda u, v: _inside_star_polygon(u, v, 3, (1.0,), up),
        "star": lambda u, v: _inside_star_polygon(u, v, 10, (1.0, _STAR_INNER), up),
    }
    for index, name in enumerate(SHAPE_NAMES):
        rows = shape == index
        if rows.any():
            inside[rows] = tests[name](u[rows], v[rows])
    return F.avg_pool2d(inside[:, None].float(), _SUPERSAMPLE)


def render_shapes(factors: dict, size: int = 32, chunk: int = 512) -> torch.Tensor:
    """Render factor vectors to uint8 RGB images of shape (N, 3, size, size)."""
    n = len(factors["shape"])
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    colour = _hsv_to_rgb(torch.as_tensor(factors["hue"], dtype=torch.float32))  # (N, 3)
    background = torch.as_tensor(factors["background"], dtype=torch.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        cover = _coverage(factors, start, stop, size)  # (B, 1, H, W)
        bg = background[start:stop, None, None, None]
        img = bg * (1 - cover) + colour[start:stop, :, None, None] * cover
        out[start:stop] = (img * 255).round().clamp(0, 255).to(torch.uint8)
    return out


def make_shapes(n: int = 20000, size: int = 32, seed: int = 0, background: bool = False,
                hue_max: float = 1.0):
    """Render n shapes; returns (uint8 images (N,3,H,W), labels, factors dict)."""
    factors = sample_factors(n, seed, background, hue_max)
    images = render_shapes(factors, size)
    return images, torch.as_tensor(factors["shape"], dtype=torch.long), factors

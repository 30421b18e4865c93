"""Captioned scenes: one or two shapes of the `shapes` renderer (utils/shapes.py) on a plain
background, each with a caption written from its ground truth, for training and measuring
text-to-image models whose faithfulness to the prompt is a number.

One-object scenes have four attributes: shape, colour (a named bin of the hue circle), size
(small or large) and position (a cell of a 3x3 grid). Two-object scenes have two small objects
and a relation between them (left of, right of, above, below), the first object being the one
the relation is about ("a red circle to the left of a blue square").

Captions are drawn from several templates and synonyms, chosen by a generator seeded per scene,
so a caption is a deterministic function of (factors, seed, index) and parse_caption reads the
factors back from any caption (every template names every attribute once).

Held-out compositions (HELD_OUT_OBJECTS, HELD_OUT_PAIRS) are never drawn into the train split;
the test split draws HELD_OUT_SHARE of its scenes from them, so that generalisation to unseen
combinations of known words can be measured.
"""
import numpy as np
import torch

from utils.shapes import SHAPE_NAMES, _coverage, _hsv_to_rgb

# Colour bins: a name per bin with its centre hue in degrees (HSV, full saturation). A bin runs
# halfway to its neighbours' centres; hues are drawn from the middle half of their bin.
COLOURS = (("red", 0.0), ("orange", 30.0), ("yellow", 60.0), ("green", 120.0),
           ("cyan", 180.0), ("blue", 240.0), ("purple", 275.0), ("pink", 320.0))
COLOUR_NAMES = tuple(name for name, _ in COLOURS)
SIZES = {"small": (0.22, 0.28), "large": (0.36, 0.42)}  # circumradius / half-width
SIZE_NAMES = tuple(SIZES)
# 3x3 cells, row by row from the top; centres at -0.5, 0, 0.5 of the half-width (y up)
CELLS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom",
         "bottom right")
RELATIONS = ("left of", "right of", "above", "below")
_CELL_JITTER = 0.06
_PAIR_OFFSET = 0.45  # two objects: each centre this far from the middle along the relation's axis

HELD_OUT_OBJECTS = (("green", "star"), ("purple", "triangle"))  # (colour, shape), any size/place
HELD_OUT_PAIRS = ((("red", "circle"), ("blue", "square")),)  # two objects, either order/relation
HELD_OUT_SHARE = 0.25  # share of the test split drawn from held-out compositions

_SYNONYMS = {
    "small": ("small", "tiny", "little"), "large": ("large", "big", "huge"),
    "red": ("red", "crimson", "scarlet"), "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "golden"), "green": ("green", "emerald"),
    "cyan": ("cyan", "turquoise"), "blue": ("blue", "azure"), "purple": ("purple", "violet"),
    "pink": ("pink", "magenta"), "circle": ("circle", "disc"), "square": ("square", "box"),
    "triangle": ("triangle",), "star": ("star",),
}
_PLACES = {  # (phrase after the object, short label before a colon)
    "top left": (("in the top left corner", "at the top left"), ("top left",)),
    "top": (("at the top", "in the top middle"), ("top",)),
    "top right": (("in the top right corner", "at the top right"), ("top right",)),
    "left": (("on the left", "at the left side"), ("left",)),
    "centre": (("in the centre", "in the middle"), ("centre", "middle")),
    "right": (("on the right", "at the right side"), ("right",)),
    "bottom left": (("in the bottom left corner", "at the bottom left"), ("bottom left",)),
    "bottom": (("at the bottom", "in the bottom middle"), ("bottom",)),
    "bottom right": (("in the bottom right corner", "at the bottom right"), ("bottom right",)),
}
_RELATION_WORDS = {"left of": ("to the left of", "left of"),
                   "right of": ("to the right of", "right of"),
                   "above": ("above", "over"), "below": ("below", "under")}
_ONE_TEMPLATES = ("a {size} {colour} {shape} {place}", "{label}: a {size} {colour} {shape}",
                  "there is a {size} {colour} {shape} {place}",
                  "a {colour} {shape}, {size}, {place}")
_TWO_TEMPLATES = ("a {colour} {shape} {relation} a {colour2} {shape2}",
                  "{colour} {shape} {relation} {colour2} {shape2}")


def _held_out(colour: int, shape: int) -> bool:
    return (COLOUR_NAMES[colour], SHAPE_NAMES[shape]) in HELD_OUT_OBJECTS


def _held_out_pair(a: tuple[int, int], b: tuple[int, int]) -> bool:
    names = {(COLOUR_NAMES[a[0]], SHAPE_NAMES[a[1]]), (COLOUR_NAMES[b[0]], SHAPE_NAMES[b[1]])}
    return any(names == set(pair) for pair in HELD_OUT_PAIRS)


def held_out_scene(f: dict, i: int) -> bool:
    """Whether scene i shows a held-out composition (a held-out object, or a held-out pair)."""
    objects = [(int(f["colour"][i, k]), int(f["shape"][i, k])) for k in range(int(f["objects"][i]))]
    return any(_held_out(*o) for o in objects) or (len(objects) == 2 and
                                                   _held_out_pair(*objects))


def _draw_object(rng, split: str, held: bool) -> tuple[int, int]:
    """(colour, shape) indices: any allowed one (train: never held out), or a held-out one."""
    if held:
        colour, shape = HELD_OUT_OBJECTS[rng.integers(len(HELD_OUT_OBJECTS))]
        return COLOUR_NAMES.index(colour), SHAPE_NAMES.index(shape)
    while True:
        colour, shape = int(rng.integers(len(COLOURS))), int(rng.integers(len(SHAPE_NAMES)))
        if split != "train" or not _held_out(colour, shape):
            return colour, shape


def sample_scenes(n: int, seed: int, split: str = "train", two_share: float = 0.5) -> dict:
    """Factors of n scenes: per scene the number of objects (1 or 2), and per object slot
    (0, 1) colour bin, shape, size bin, hue, radius, rotation, x, y; one-object scenes have a
    cell, two-object scenes a relation (object 0 relative to object 1). Arrays of length n;
    slot 1 of a one-object scene is -1 / 0."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    f = {k: np.full((n, 2), -1, dtype=np.int64) for k in ("colour", "shape", "size")}
    f.update({k: np.zeros((n, 2)) for k in ("hue", "radius", "rotation", "x", "y")})
    f["objects"] = np.where(rng.uniform(size=n) < two_share, 2, 1)
    f["cell"], f["relation"] = np.full(n, -1), np.full(n, -1)
    held = (rng.uniform(size=n) < HELD_OUT_SHARE) if split == "test" else np.zeros(n, bool)
    for i in range(n):
        if f["objects"][i] == 1:
            objects = [_draw_object(rng, split, held[i])]
            f["cell"][i] = rng.integers(len(CELLS))
            row, col = divmod(int(f["cell"][i]), 3)
            centres = [((col - 1) * 0.5, (1 - row) * 0.5)]
            sizes = [int(rng.integers(len(SIZES)))]
        else:
            while True:
                if held[i]:
                    pair = HELD_OUT_PAIRS[rng.integers(len(HELD_OUT_PAIRS))]
                    order = rng.permutation(2)
                    objects = [(COLOUR_NAMES.index(pair[k][0]), SHAPE_NAMES.index(pair[k][1]))
                               for k in order]
                else:
                    objects = [_draw_object(rng, split, False) for _ in range(2)]
                if held[i] or split != "train" or not _held_out_pair(*objects):
                    break
            f["relation"][i] = rng.integers(len(RELATIONS))
            axis_x = RELATIONS[f["relation"][i]] in ("left of", "right of")
            first_low = RELATIONS[f["relation"][i]] in ("left of", "below")  # object 0 at -side
            side = -_PAIR_OFFSET if first_low else _PAIR_OFFSET
            across = rng.uniform(-0.3, 0.3)
            centres = [(side, across), (-side, across)] if axis_x else \
                [(across, side), (across, -side)]
            sizes = [SIZE_NAMES.index("small")] * 2
        for k, ((colour, shape), (cx, cy), size) in enumerate(zip(objects, centres, sizes)):
            f["colour"][i, k], f["shape"][i, k], f["size"][i, k] = colour, shape, size
            f["hue"][i, k] = _draw_hue(rng, colour)
            f["radius"][i, k] = rng.uniform(*SIZES[SIZE_NAMES[size]])
            f["rotation"][i, k] = rng.uniform() if SHAPE_NAMES[shape] != "circle" else 0.0
            jitter = rng.uniform(-_CELL_JITTER, _CELL_JITTER, 2)
            f["x"][i, k], f["y"][i, k] = cx + jitter[0], cy + jitter[1]
    return f


def _draw_hue(rng, colour: int) -> float:
    """A hue (fraction of the circle) from the middle half of the colour's bin."""
    centre = COLOURS[colour][1]
    before, after = COLOURS[colour - 1][1], COLOURS[(colour + 1) % len(COLOURS)][1]
    low = centre - ((centre - before) % 360) / 2  # the bin's edges, halfway to the neighbours
    high = centre + ((after - centre) % 360) / 2
    return (rng.uniform(centre - (centre - low) / 2, centre + (high - centre) / 2) % 360) / 360


def colour_bin(hue: float) -> int:
    """The colour bin a hue (fraction of the circle) falls in: the nearest centre."""
    degrees = (hue % 1.0) * 360
    return int(np.argmin([min(abs(degrees - c), 360 - abs(degrees - c)) for _, c in COLOURS]))


def render_scenes(f: dict, size: int = 32, background: float = 0.0) -> torch.Tensor:
    """uint8 RGB images (N, 3, size, size): the objects painted in slot order over the plain
    background (two-object scenes do not overlap)."""
    n = len(f["objects"])
    img = torch.full((n, 3, size, size), background)
    for k in range(2):
        rows = np.flatnonzero(f["objects"] > k)
        if not len(rows):
            continue
        per = {"shape": f["shape"][rows, k], "scale": f["radius"][rows, k],
               "rotation": f["rotation"][rows, k], "pos_x": f["x"][rows, k],
               "pos_y": f["y"][rows, k]}
        cover = _coverage(per, 0, len(rows), size)
        colour = _hsv_to_rgb(torch.as_tensor(f["hue"][rows, k], dtype=torch.float32))
        index = torch.as_tensor(rows)
        img[index] = img[index] * (1 - cover) + colour[:, :, None, None] * cover
    return (img * 255).round().clamp(0, 255).to(torch.uint8)


def caption(f: dict, i: int, seed: int) -> str:
    """The caption of scene i: a template and synonyms drawn by a generator seeded by (seed, i)."""
    rng = np.random.default_rng([seed, 2, i])

    def word(name: str) -> str:
        options = _SYNONYMS[name]
        return options[rng.integers(len(options))]
    colour, shape = word(COLOUR_NAMES[f["colour"][i, 0]]), word(SHAPE_NAMES[f["shape"][i, 0]])
    if f["objects"][i] == 1:
        places, labels = _PLACES[CELLS[f["cell"][i]]]
        template = _ONE_TEMPLATES[rng.integers(len(_ONE_TEMPLATES))]
        return template.format(size=word(SIZE_NAMES[f["size"][i, 0]]), colour=colour,
                               shape=shape, place=places[rng.integers(len(places))],
                               label=labels[rng.integers(len(labels))])
    relations = _RELATION_WORDS[RELATIONS[f["relation"][i]]]
    template = _TWO_TEMPLATES[rng.integers(len(_TWO_TEMPLATES))]
    return template.format(colour=colour, shape=shape,
                           relation=relations[rng.integers(len(relations))],
                           colour2=word(COLOUR_NAMES[f["colour"][i, 1]]),
                           shape2=word(SHAPE_NAMES[f["shape"][i, 1]]))


def captions(f: dict, seed: int) -> list[str]:
    return [caption(f, i, seed) for i in range(len(f["objects"]))]


_WORD_TO = {syn: name for name, syns in _SYNONYMS.items() for syn in syns}


def parse_caption(text: str) -> dict:
    """The attributes a caption names: {"objects": [(colour, shape, size or None), ...], "cell":
    name or None, "relation": name or None}, in the caption's order (a relation is about the
    first object); a ValueError for a caption that is not one of the templates' language."""
    words = text.lower().replace(":", " : ").replace(",", " , ").split()
    objects, size, colour, cell, relation = [], None, None, None, None
    joined = " ".join(words)
    for name, (places, labels) in _PLACES.items():
        for phrase in (*places, *(f"{label} :" for label in labels)):
            if f" {phrase} " in f" {joined} " or joined.startswith(f"{phrase}"):
                if cell is None or len(phrase) > len(cell[1]):
                    cell = (name, phrase)
    for name, phrases in _RELATION_WORDS.items():
        for phrase in phrases:
            if f" {phrase} " in f" {joined} ":
                if relation is None or len(phrase) > len(relation[1]):
                    relation = (name, phrase)
    for w in words:
        name = _WORD_TO.get(w)
        if name in SIZES:
            size = name
        elif name in COLOUR_NAMES:
            colour = name
        elif name in SHAPE_NAMES:
            if colour is None:
                raise ValueError(f"{text!r}: a shape without a colour")
            objects.append([colour, name, size])
            colour = None
    if size is not None and len(objects) == 1:
        objects[0][2] = size
    if not objects or len(objects) > 2 or (len(objects) == 2) != (relation is not None):
        raise ValueError(f"{text!r} is not a scene caption")
    return {"objects": [tuple(o) for o in objects],
            "cell": None if len(objects) == 2 or cell is None else cell[0],
            "relation": None if relation is None else relation[0]}


def factors_of(f: dict, i: int) -> dict:
    """Scene i's attributes in parse_caption's form (to compare a caption with its scene)."""
    objects = [(COLOUR_NAMES[f["colour"][i, k]], SHAPE_NAMES[f["shape"][i, k]],
                SIZE_NAMES[f["size"][i, k]] if f["objects"][i] == 1 else None)
               for k in range(int(f["objects"][i]))]
    return {"objects": objects,
            "cell": CELLS[f["cell"][i]] if f["objects"][i] == 1 else None,
            "relation": RELATIONS[f["relation"][i]] if f["objects"][i] == 2 else None}


def position_cell(x: float, y: float) -> int:
    """The 3x3 cell of a point (x right, y up, in [-1, 1])."""
    col = 0 if x < -0.25 else (2 if x > 0.25 else 1)
    row = 0 if y > 0.25 else (2 if y < -0.25 else 1)
    return row * 3 + col


# ---- what an attribute reader predicts, in one canonical form for scenes and prompts ----
# Two objects are ordered by place, not by the caption's wording ("a red circle left of a blue
# square" and "a blue square right of a red circle" are one scene): along a horizontal relation
# object a is the left one, along a vertical one the upper one.
READER_HEADS = {"objects": 2, "shape": len(SHAPE_NAMES), "colour": len(COLOURS),
                "size": len(SIZES), "cell": len(CELLS), "axis": 2,
                "shape_a": len(SHAPE_NAMES), "colour_a": len(COLOURS),
                "shape_b": len(SHAPE_NAMES), "colour_b": len(COLOURS)}
ONE_OBJECT_HEADS = ("shape", "colour", "size", "cell")
TWO_OBJECT_HEADS = ("axis", "shape_a", "colour_a", "shape_b", "colour_b")
_FIRST_IS_A = {"left of": True, "right of": False, "above": True, "below": False}


def attribute_targets(parsed: dict) -> dict[str, int]:
    """The reader's targets (-1: not applicable) of parse_caption's / factors_of's attributes."""
    out = {name: -1 for name in READER_HEADS}
    objects = parsed["objects"]
    out["objects"] = len(objects) - 1
    if len(objects) == 1:
        colour, shape, size = objects[0]
        out.update(shape=SHAPE_NAMES.index(shape), colour=COLOUR_NAMES.index(colour),
                   size=SIZE_NAMES.index(size) if size else -1,
                   cell=CELLS.index(parsed["cell"]) if parsed["cell"] else -1)
        return out
    relation = parsed["relation"]
    a, b = objects if _FIRST_IS_A[relation] else objects[::-1]
    out.update(axis=0 if relation in ("left of", "right of") else 1,
               shape_a=SHAPE_NAMES.index(a[1]), colour_a=COLOUR_NAMES.index(a[0]),
               shape_b=SHAPE_NAMES.index(b[1]), colour_b=COLOUR_NAMES.index(b[0]))
    return out


def scene_targets(f: dict) -> dict[str, torch.Tensor]:
    """attribute_targets of every scene, as (N,) long tensors per head."""
    rows = [attribute_targets(factors_of(f, i)) for i in range(len(f["objects"]))]
    return {name: torch.tensor([r[name] for r in rows]) for name in READER_HEADS}

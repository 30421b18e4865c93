"""Training the attribute reader (models/attribute_reader.py) on rendered scenes, reading
generated images with it, and scoring them against their prompts: prompt faithfulness.

faithfulness() compares what the reader sees with what the prompt asked for (both in
utils.scenes.attribute_targets' canonical form):
    one-object prompts: the share right per attribute (objects, shape, colour, size, cell) and
        the share with all of them right;
    two-object prompts: the share right per attribute (objects, axis, each object's shape and
        colour) and the binding rate, the share with two objects, each colour on the right
        shape and the relation right (all of them at once).
"""
import torch

from models.attribute_reader import AttributeReader, reader_loss
from utils.data import to_float
from utils.scenes import ONE_OBJECT_HEADS, READER_HEADS, TWO_OBJECT_HEADS


def train_reader(images: torch.Tensor, targets: dict[str, torch.Tensor], *, epochs: int = 4,
                 batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                 device: torch.device | None = None) -> AttributeReader:
    """A reader trained with Adam on uint8 images (N, 3, H, W) and their targets."""
    device = device or torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    reader = AttributeReader(READER_HEADS, image_size=images.shape[-1]).to(device)
    opt = torch.optim.Adam(reader.parameters(), lr=lr)
    steps = epochs * (len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(1, steps))
    reader.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images) - batch_size + 1, batch_size):
            pick = order[start:start + batch_size]
            x = to_float(images[pick].to(device))
            loss = reader_loss(reader(x), {k: v[pick] for k, v in targets.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return reader.eval()


@torch.no_grad()
def read(reader: AttributeReader, images: torch.Tensor, batch_size: int = 500
         ) -> dict[str, torch.Tensor]:
    """The reader's verdict per attribute (argmax) for uint8 or [-1, 1] images, on the CPU."""
    device = next(reader.parameters()).device
    out = {name: [] for name in READER_HEADS}
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        x = to_float(x) if x.dtype == torch.uint8 else x.float()
        for name, logits in reader(x).items():
            out[name].append(logits.argmax(1).cpu())
    return {name: torch.cat(values) for name, values in out.items()}


def faithfulness(seen: dict[str, torch.Tensor], asked: dict[str, torch.Tensor]) -> dict:
    """Shares right between the reader's verdicts `seen` and the prompts' targets `asked`
    (see the module docstring); a group without prompts is left out."""
    result = {}
    for group, count, heads in (("one_object", 0, ONE_OBJECT_HEADS),
                                ("two_objects", 1, TWO_OBJECT_HEADS)):
        rows = asked["objects"] == count
        if not rows.any():
            continue
        right = {"objects": seen["objects"][rows] == count}
        for name in heads:
            applies = asked[name][rows] >= 0
            right[name] = (seen[name][rows] == asked[name][rows]) | ~applies
        every = torch.stack(list(right.values())).all(0)
        result[group] = {"prompts": int(rows.sum()),
                         **{name: float(r.float().mean()) for name, r in right.items()},
                         ("binding" if count else "all_right"): float(every.float().mean())}
    return result


def verdicts(seen: dict[str, torch.Tensor], asked: dict[str, torch.Tensor]) -> list[str]:
    """A short verdict per image for figures: 'right', or the attributes read wrong with what
    the reader saw ('colour: orange, cell: top')."""
    from utils.scenes import CELLS, COLOUR_NAMES, SIZE_NAMES
    from utils.shapes import SHAPE_NAMES
    names = {"shape": SHAPE_NAMES, "colour": COLOUR_NAMES, "size": SIZE_NAMES, "cell": CELLS,
             "axis": ("left-right", "above-below"), "shape_a": SHAPE_NAMES,
             "colour_a": COLOUR_NAMES, "shape_b": SHAPE_NAMES, "colour_b": COLOUR_NAMES}
    out = []
    for i in range(len(asked["objects"])):
        count = int(asked["objects"][i])
        if int(seen["objects"][i]) != count:
            out.append(f"{int(seen['objects'][i]) + 1} object(s)")
            continue
        heads = TWO_OBJECT_HEADS if count else ONE_OBJECT_HEADS
        wrong = [f"{h.replace('_', ' ')}: {names[h][int(seen[h][i])]}" for h in heads
                 if int(asked[h][i]) >= 0 and int(seen[h][i]) != int(asked[h][i])]
        out.append(", ".join(wrong) if wrong else "right")
    return out

"""The attribute reader: canonical targets from scenes and prompts agree, the faithfulness
scores count exactly, and the reader learns to read rendered scenes."""
import torch

from models.attribute_reader import AttributeReader
from train.attribute_reader import faithfulness, read, train_reader
from utils.scenes import (READER_HEADS, attribute_targets, captions, factors_of, parse_caption,
                          render_scenes, sample_scenes, scene_targets)


def test_a_scene_and_any_caption_of_it_give_the_same_targets():
    f = sample_scenes(500, seed=5)
    for seed in (0, 1, 2):  # other templates and synonyms of the same scenes
        for i, text in enumerate(captions(f, seed)):
            assert attribute_targets(parse_caption(text)) == \
                attribute_targets(factors_of(f, i)), text
    swapped = parse_caption("a blue square right of a red circle")
    assert attribute_targets(swapped) == attribute_targets(
        parse_caption("a red circle to the left of a blue square"))
    assert attribute_targets(swapped)["cell"] == -1


def test_faithfulness_counts_exactly():
    asked = {name: torch.full((4,), -1) for name in READER_HEADS}
    asked["objects"] = torch.tensor([0, 0, 1, 1])
    for name, values in {"shape": [1, 2], "colour": [3, 3], "size": [0, 1], "cell": [4, 8]}.items():
        asked[name][:2] = torch.tensor(values)
    for name, values in {"axis": [0, 1], "shape_a": [0, 0], "colour_a": [1, 1],
                         "shape_b": [2, 2], "colour_b": [5, 5]}.items():
        asked[name][2:] = torch.tensor(values)
    seen = {name: v.clone().clamp(min=0) for name, v in asked.items()}
    seen["cell"][1] = 7  # one-object prompt 2: wrong place
    seen["colour_b"][3] = 1  # two-object prompt 2: colours swapped onto the wrong shapes...
    seen["colour_a"][3] = 5
    result = faithfulness(seen, asked)
    one, two = result["one_object"], result["two_objects"]
    assert one["prompts"] == 2 and one["cell"] == 0.5 and one["shape"] == 1.0
    assert one["all_right"] == 0.5
    assert two["colour_a"] == 0.5 and two["axis"] == 1.0 and two["binding"] == 0.5
    seen["objects"][2] = 0  # ...and one object where two were asked for
    assert faithfulness(seen, asked)["two_objects"]["binding"] == 0.0


def test_the_reader_learns_to_read_scenes():
    f = sample_scenes(3000, seed=6, two_share=0.5)
    images, targets = render_scenes(f, 32), scene_targets(f)
    reader = train_reader(images[:2500], {k: v[:2500] for k, v in targets.items()}, epochs=3,
                          batch_size=64)
    assert isinstance(reader, AttributeReader)
    held = {k: v[2500:] for k, v in targets.items()}
    scores = faithfulness(read(reader, images[2500:]), held)
    assert scores["one_object"]["objects"] > 0.9 and scores["one_object"]["cell"] > 0.7
    assert scores["one_object"]["colour"] > 0.5 and scores["two_objects"]["axis"] > 0.7

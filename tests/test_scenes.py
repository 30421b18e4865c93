"""Captioned scenes (utils/scenes.py): captions say exactly the factors, deterministically; the
held-out compositions never reach the train split; the rendered pixels show the factors."""
import colorsys

import numpy as np
import pytest

from utils.scenes import (CELLS, COLOUR_NAMES, HELD_OUT_OBJECTS, HELD_OUT_PAIRS, _draw_hue,
                          caption, captions, colour_bin, factors_of, held_out_scene, parse_caption,
                          position_cell, render_scenes, sample_scenes)
from utils.shapes import SHAPE_NAMES


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_caption_names_exactly_its_scenes_factors(split):
    f = sample_scenes(3000, seed=1, split=split)
    texts = captions(f, seed=1)
    assert [parse_caption(t) for t in texts] == [factors_of(f, i) for i in range(3000)]
    assert texts == captions(sample_scenes(3000, seed=1, split=split), seed=1)  # deterministic
    assert len(set(texts)) > 1000  # templates and synonyms vary the wording
    assert texts != captions(f, seed=2)


def test_held_out_compositions_never_occur_in_the_train_split_and_fill_part_of_test():
    train = sample_scenes(20000, seed=0, split="train")

    def objects(f, i):
        return {(COLOUR_NAMES[f["colour"][i, k]], SHAPE_NAMES[f["shape"][i, k]])
                for k in range(int(f["objects"][i]))}
    pairs = [set(pair) for pair in HELD_OUT_PAIRS]
    for i in range(20000):
        found = objects(train, i)
        assert not found & set(HELD_OUT_OBJECTS), i
        assert found not in pairs, i
    test = sample_scenes(4000, seed=0, split="test")
    held = [bool(objects(test, i) & set(HELD_OUT_OBJECTS)) or objects(test, i) in pairs
            for i in range(4000)]
    assert 0.2 < sum(held) / 4000 < 0.35
    assert held == [held_out_scene(test, i) for i in range(4000)]
    assert not any(held_out_scene(train, i) for i in range(20000))


def test_hues_fall_in_their_named_bins():
    rng = np.random.default_rng(0)
    for colour in range(len(COLOUR_NAMES)):
        assert all(colour_bin(_draw_hue(rng, colour)) == colour for _ in range(200))


def test_the_rendered_pixels_show_the_objects_colour_and_place():
    f = sample_scenes(300, seed=3)
    images = render_scenes(f, size=32).numpy()
    for i in range(300):
        for k in range(int(f["objects"][i])):
            col = int(round((f["x"][i, k] + 1) / 2 * 32 - 0.5))
            row = int(round((1 - f["y"][i, k]) / 2 * 32 - 0.5))  # y points up
            r, g, b = images[i, :, row, col] / 255
            hue, saturation, _ = colorsys.rgb_to_hsv(r, g, b)
            assert saturation > 0.9 and colour_bin(hue) == f["colour"][i, k], (i, k)
        if f["objects"][i] == 1:
            assert CELLS[position_cell(f["x"][i, 0], f["y"][i, 0])] == CELLS[f["cell"][i]]


def test_two_objects_never_overlap_and_keep_their_relation():
    f = sample_scenes(2000, seed=4, two_share=1.0)
    for i in range(2000):
        gap = np.hypot(f["x"][i, 0] - f["x"][i, 1], f["y"][i, 0] - f["y"][i, 1])
        assert gap > f["radius"][i, 0] + f["radius"][i, 1], i
        relation = parse_caption(caption(f, i, 0))["relation"]
        dx, dy = f["x"][i, 0] - f["x"][i, 1], f["y"][i, 0] - f["y"][i, 1]
        assert {"left of": dx < 0, "right of": dx > 0, "above": dy > 0,
                "below": dy < 0}[relation], i


@pytest.mark.parametrize("text", ["", "a red", "hello world", "a red circle a blue square",
                                  "red circle blue square green star left of"])
def test_text_that_is_no_scene_caption_is_refused(text):
    with pytest.raises(ValueError):
        parse_caption(text)

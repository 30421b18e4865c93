"""The scenes' word tokenizer: it round-trips every caption, pads like CLIP's, saves and loads,
and answers a bad prompt with one clear line."""
import pytest
import torch

from utils.errors import UserError
from utils.scenes import captions, sample_scenes
from utils.word_tokenizer import WordTokenizer


@pytest.fixture(scope="module")
def corpus():
    return captions(sample_scenes(3000, seed=0), seed=0)


def test_every_caption_round_trips(corpus):
    tok = WordTokenizer.build(corpus)
    for text in corpus:
        ids = tok.encode(text)
        assert ids.shape == (tok.length,) and ids[0] == 1
        assert tok.decode(ids) == text
        eos = int((ids == 2).nonzero()[0])
        assert (ids[eos + 1:] == 0).all() and (ids[1:eos] > 2).all()
    assert tok.length == max(len(t.replace(":", " :").replace(",", " ,").split())
                             for t in corpus) + 2


def test_the_null_caption_and_a_batch(corpus):
    tok = WordTokenizer.build(corpus)
    batch = tok.encode_batch([corpus[0], ""])
    assert torch.equal(batch[0], tok.encode(corpus[0])) and torch.equal(batch[1], tok.null())
    assert tok.null()[:3].tolist() == [1, 2, 0] and tok.decode(tok.null()) == ""


def test_it_saves_and_loads(corpus, tmp_path):
    tok = WordTokenizer.build(corpus)
    tok.save(tmp_path / "tokenizer.json")
    again = WordTokenizer.load(tmp_path / "tokenizer.json")
    assert again.words == tok.words and again.length == tok.length
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read the tokenizer"):
        WordTokenizer.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="not a saved word tokenizer"):
        WordTokenizer.from_dict({"length": 5})


@pytest.mark.parametrize("prompt, message", [
    ("", "the prompt is empty"), ("   ", "the prompt is empty"),
    ("a red star!", "characters the tokenizer does not know: '!'"),
    ("a réd star", "characters the tokenizer does not know: 'é'"),
    ("a red zebra", "never saw the word 'zebra'"),
    ("a rad star", "did you mean red"),
    ("a red star " * 10, "this model reads at most")])
def test_a_bad_prompt_gets_one_clear_line(corpus, prompt, message):
    tok = WordTokenizer.build(corpus)
    with pytest.raises(UserError, match=message):
        tok.encode(prompt)

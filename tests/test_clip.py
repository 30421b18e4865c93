"""The CLIP tokenizer and text model against their references (test-only oracles: open_clip's
tokenizer, which ships CLIP's BPE file, and transformers' CLIPTokenizer / CLIPTextModel)."""
import json
import random
import re
from pathlib import Path

import pytest
import torch

from utils.clip_tokenizer import CONTEXT_LENGTH, CLIPTokenizer
from utils.errors import UserError

open_clip = pytest.importorskip("open_clip")

BPE = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
FIXED = ["a red fox in the snow", "A photograph of an astronaut riding a horse, 4k, trending!!",
         "it's what we'll do, they'd said; you're 100% right...", "naïve café déjà vu",
         "東京の夜景", "emoji 🦊🔥 and symbols #@$ & <b>bold</b> &amp; &lt;tag&gt;",
         "   many    spaces\tand\nnewlines  ", "", "12345 67.89 3x3 conv", "<|endoftext|> x",
         "Hyphen-ated words and CamelCase and ALLCAPS", "ünïcödé ñ ß ø å æ œ", "a " * 100]


def _strings(n: int = 300) -> list[str]:
    """The fixed cases and random strings of words, digits, punctuation and unicode."""
    rng = random.Random(0)
    alphabet = ("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ 0123456789 .,;:!?'\"-()[]{}/\\&%$#@*+= "
                "éèàüöäñçøß 中文日本語 😀🎨")
    words = ["the", "cat", "painting", "of", "oil", "sunset", "highly", "detailed", "portrait",
             "unreal", "engine", "octane", "render", "it's", "don't", "we've"]
    out = list(FIXED)
    while len(out) < n:
        if rng.random() < 0.5:
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))))
        else:
            out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))))
    return out


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.load(BPE)


def test_bpe_ids_equal_open_clips_from_the_original_vocabulary_file(tokenizer):
    reference = open_clip.tokenizer.SimpleTokenizer(str(BPE))
    assert len(tokenizer.vocab) == 49408
    assert (tokenizer.start, tokenizer.end) == (49406, 49407)
    for text in _strings():
        if "<|" in text:  # open_clip names its special tokens differently
            continue
        assert tokenizer.encode(text) == reference.encode(text), text


def _folder(tokenizer: CLIPTokenizer, root: Path) -> Path:
    """A transformers-style tokenizer folder written from the same vocabulary."""
    root.mkdir()
    (root / "vocab.json").write_text(json.dumps(tokenizer.vocab), encoding="utf-8")
    merges = sorted(tokenizer.ranks, key=tokenizer.ranks.get)
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges),
                                     encoding="utf-8")
    return root


def test_padded_ids_equal_transformers_clip_tokenizer(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = _folder(tokenizer, tmp_path / "tokenizer")
    ours = CLIPTokenizer.load(tmp_path)  # a model folder with tokenizer/ inside
    reference = transformers.CLIPTokenizer(str(folder / "vocab.json"),
                                           str(folder / "merges.txt"),
                                           pad_token="<|endoftext|>")
    # CLIP unescapes HTML entities ("&amp;" is "&"); transformers' fast tokenizer does not, and
    # SD prompts rarely hold entities: those strings are compared with open_clip above only
    strings = [t for t in _strings() if not re.search(r"&\w+;|&#", t)]
    assert len(strings) > 250
    expected = reference(strings, padding="max_length", max_length=CONTEXT_LENGTH,
                         truncation=True, return_tensors="pt").input_ids
    got = ours(strings)
    for text, a, b in zip(strings, got, expected):
        assert a.tolist() == b.tolist(), text
    long = ours("a " * 100)[0]  # truncated: start, 75 tokens, end
    assert long[0] == 49406 and long[-1] == 49407 and (long[1:-1] != 49407).all()


def test_a_missing_or_wrong_vocabulary_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="TOKENIZER"):
        CLIPTokenizer.load(tmp_path / "none")
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="not a CLIP vocabulary"):
        CLIPTokenizer.load(tmp_path / "bad.txt.gz")
    torch.manual_seed(0)


def test_text_encoder_equals_transformers_clip_text_model_through_the_single_file_layout():
    """A tiny random text encoder exported to SD's single-file keys, converted by diffusers'
    own conversion function and loaded into transformers' CLIPTextModel: same output."""
    transformers = pytest.importorskip("transformers")
    single_file = pytest.importorskip("diffusers.loaders.single_file_utils")
    from models.clip import CLIPTextEncoder
    from models.sd_weights import TEXT_PREFIX
    torch.manual_seed(0)
    ours = CLIPTextEncoder(vocab=1000, width=32, layers=2, heads=4, hidden=64).eval()
    for p in ours.parameters():  # LayerNorms away from their identity start
        torch.nn.init.normal_(p, std=0.3)
    exported = {TEXT_PREFIX + k: v for k, v in ours.state_dict().items()}
    config = transformers.CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         max_position_embeddings=77, hidden_act="quick_gelu",
                                         bos_token_id=0, eos_token_id=2)
    reference = transformers.CLIPTextModel(config).eval()
    converted = single_file.convert_ldm_clip_checkpoint(exported)  # "text_model.*" keys
    if not any(k.startswith("text_model.") for k in reference.state_dict()):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}  # v5 names
    missing, unexpected = reference.load_state_dict(converted, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    ids = torch.randint(0, 1000, (3, 77))
    with torch.no_grad():
        expected = reference(ids).last_hidden_state
        assert (ours(ids) - expected).abs().max() <= 1e-5


def test_full_size_text_encoder_has_sd_v15s_parameters_and_keys():
    """On the meta device (no memory): ViT-L/14's text tower, 123,060,480 parameters, named as
    the single-file checkpoint names them under cond_stage_model.transformer."""
    from models.clip import CLIPTextEncoder
    with torch.device("meta"):
        model = CLIPTextEncoder()
    assert sum(p.numel() for p in model.parameters()) == 123_060_480
    keys = set(model.state_dict())
    assert "text_model.encoder.layers.11.mlp.fc2.bias" in keys and len(keys) == 196
    assert "text_model.final_layer_norm.weight" in keys


EDGE_CASES = ["\u201ccurly\u201d \u2018quotes\u2019", "fish &amp; chips", "&lt;b&gt;", "ﬁne ﬂowers",
              "ＦＵＬＬ ｗｉｄｔｈ", "bell\x07 and\x00 nul", "Cafe\u0301 (combining accent)",
              "tab\tand\u00a0nbsp", "\u2014 em dash \u2026", "ÀÉÎÕÜ"]


def test_the_transformers_convention_equals_its_fast_tokenizer_on_edge_cases(tokenizer,
                                                                          tmp_path):
    """CLIP's own cleaning (the default) and transformers' fast CLIPTokenizer differ on
    entities, ligatures, full-width letters, control characters; the "transformers" convention
    gives the fast tokenizer's ids on all of them, and on the ordinary strings as well."""
    transformers = pytest.importorskip("transformers")
    folder = _folder(tokenizer, tmp_path / "tokenizer")
    fast = transformers.CLIPTokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                          pad_token="<|endoftext|>")
    ours = CLIPTokenizer.load(tmp_path)
    ours.convention = "transformers"
    strings = EDGE_CASES + _strings(100)
    expected = fast(strings, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    for text, a, b in zip(strings, ours(strings), expected):
        assert a.tolist() == b.tolist(), text
    clip = CLIPTokenizer.load(tmp_path)  # CLIP's own convention: differs on some of them
    differ = sum(a.tolist() != b.tolist() for a, b in zip(clip(EDGE_CASES),
                                                          expected[:len(EDGE_CASES)]))
    assert differ >= 3
    with pytest.raises(UserError, match="convention"):
        CLIPTokenizer(tokenizer.vocab, [], convention="hf")

"""Tokenizer and processor parity with transformers 5 on a tiny Gemma-style BPE tokenizer built here.

Run: `pytest tests/test_tokenization.py` (a few seconds). The tokenizer.json has byte fallback, specials
pad=0 eos=1 bos=2 unk=3 mask=4 and a post-processor appending <eos>, like the published SigLIP2 checkpoints.
NaFlex (model_type siglip2) lowercases; FixRes (model_type siglip) does not.
"""

import json
import os

import numpy as np
import pytest
import torch

CORPUS = [
    "This is a photo of a cat.",
    "This is a photo of a dog.",
    "a photo of two cats on a red sofa",
    "A Blue Circle with a green border on a red background",
    "the quick brown fox jumps over the lazy dog",
    "HELLO WORLD",
    "Photo of an astronaut",
    "coffee cup",
    "rocket launch at night",
    "page of text 123 456",
]
TEXTS = [
    "This is a photo of a Cat.",
    "A BLUE CIRCLE",
    "",
    "  leading and  double  spaces ",
    "café naïve 東京 🚀",
    "<eos> literal specials <pad>",
    "tabs\tand\nnewlines",
    "x" * 300,
    " ".join(["word"] * 80),  # longer than 64 tokens: truncated, <eos> kept last
]


def make_tokenizer_dir(path, model_type="siglip2", padding_side="right", input_names=("input_ids",)):
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json (+ config.json if model_type)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    os.makedirs(path, exist_ok=True)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    t = Tokenizer(BPE(unk_token="<unk>"))
    t.normalizer = normalizers.Replace(" ", "▁")
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=specials, show_progress=False))
    trained = json.loads(t.to_str())["model"]
    vocab = {s: i for i, s in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for tok_, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(tok_, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = processors.TemplateProcessing(
        single="$A <eos>", pair="$A <eos> $B <eos>", special_tokens=[("<eos>", 1)]
    )
    tok.save(os.path.join(path, "tokenizer.json"))
    added = {
        str(i): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, s in enumerate(specials)
    }
    cfg = {
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": False,
        "add_eos_token": True,
        "padding_side": padding_side,
        "model_input_names": list(input_names),
        "pad_token": "<pad>",
        "eos_token": "<eos>",
        "bos_token": "<bos>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "model_max_length": 1000000000000000019884624838656,
        "added_tokens_decoder": added,
    }
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(path, "special_tokens_map.json"), "w") as f:
        json.dump({k: v for k, v in cfg.items() if k.endswith("_token")}, f)
    if model_type:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"model_type": model_type}, f)
    return str(path)


def _hf_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("model_type", ["siglip2", "siglip"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(padding="max_length", max_length=64, truncation=True),
        dict(padding=True),
        dict(padding="max_length", max_length=16, truncation=True),
    ],
)
def test_ids_match_transformers(tmp_path, model_type, kwargs):
    from siglip2.processing.tokenization import Siglip2Tokenizer

    d = make_tokenizer_dir(tmp_path, model_type)
    ours, ref = Siglip2Tokenizer.from_pretrained(d), _hf_tokenizer(d)
    assert ours.lowercase == (model_type == "siglip2")
    texts = TEXTS if kwargs.get("truncation") else TEXTS[:-2]
    a, b = ours(texts, **kwargs), ref(texts, return_tensors="pt", **kwargs)
    assert sorted(a.keys()) == sorted(b.keys()) == ["input_ids"]
    assert torch.equal(a["input_ids"], b["input_ids"]), (a["input_ids"], b["input_ids"])
    for t in texts[:6]:  # unpadded single strings
        assert ours(t, return_tensors=None)["input_ids"] == ref(t)["input_ids"]


def test_lowercase_eos_truncation_and_padding_side(tmp_path):
    from siglip2.processing.tokenization import Siglip2Tokenizer

    d = make_tokenizer_dir(tmp_path / "a", "siglip2")
    tok = Siglip2Tokenizer.from_pretrained(d)
    ids = tok(["A CAT", "a cat"], padding="max_length", max_length=64, truncation=True)["input_ids"]
    assert ids.shape == (2, 64) and ids.dtype == torch.int64
    assert torch.equal(ids[0], ids[1])  # lowercased
    n = int((ids[0] != 0).sum())
    assert ids[0, n - 1] == 1 and (ids[0, n:] == 0).all()  # <eos> then right padding
    long = tok(" ".join(["word"] * 200), padding="max_length", max_length=64, truncation=True)["input_ids"]
    assert long.shape == (1, 64) and long[0, -1] == 1  # truncation keeps <eos> last
    fixres = Siglip2Tokenizer.from_pretrained(make_tokenizer_dir(tmp_path / "b", "siglip"))
    a = fixres(["A CAT", "a cat"], padding=True)["input_ids"]
    assert not torch.equal(a[0], a[1])  # no lowercasing
    left = Siglip2Tokenizer.from_pretrained(
        make_tokenizer_dir(tmp_path / "c", "siglip2", padding_side="left", input_names=("input_ids", "attention_mask"))
    )
    out = left(["a", "a photo of a cat"], padding=True)
    assert (
        out["input_ids"][0, 0] == 0 and out["attention_mask"][0, 0] == 0 and out["attention_mask"].dtype == torch.int64
    )
    assert tok.decode(tok("hello world", return_tensors=None)["input_ids"]) == "hello world"


def test_save_roundtrip_and_errors(tmp_path):
    from siglip2.checkpoints.loading import CheckpointError
    from siglip2.processing.tokenization import Siglip2Tokenizer

    tok = Siglip2Tokenizer.from_pretrained(make_tokenizer_dir(tmp_path / "a", "siglip2"))
    tok.save_pretrained(tmp_path / "b")
    again = Siglip2Tokenizer.from_pretrained(tmp_path / "b", model_type="siglip2")
    assert torch.equal(tok(TEXTS[:6], padding=True)["input_ids"], again(TEXTS[:6], padding=True)["input_ids"])
    with pytest.raises(ValueError, match="max_length"):
        tok("a cat", padding="max_length")
    with pytest.raises(ValueError, match="padding"):
        tok("a cat", padding="bogus")
    with pytest.raises(TypeError, match="text"):
        tok(3)
    with pytest.raises(ValueError, match="different lengths"):
        tok(["a", "a photo of a cat"])
    with pytest.raises(CheckpointError, match=r"tokenizer.json"):
        Siglip2Tokenizer.from_pretrained(tmp_path)


def _image_processor_dir(path, P=4, M=16):
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump(
            {
                "image_processor_type": "Siglip2ImageProcessorFast",
                "processor_class": "Siglip2Processor",
                "do_resize": True,
                "resample": 2,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
                "patch_size": P,
                "max_num_patches": M,
            },
            f,
        )


def test_processor_matches_transformers(tmp_path):
    """Processor defaults (64 tokens, 256 patches) beat the saved M=16, as upstream; the patch size stays the saved
    P=4 (transformers' combined call passes 16 unless told: tests/test_processing.py)."""
    import PIL.Image
    from transformers import Siglip2ImageProcessorPil
    from transformers import Siglip2Processor as HFProcessor

    from siglip2.processing.processor import Siglip2Processor

    d = make_tokenizer_dir(tmp_path, "siglip2")
    _image_processor_dir(d)
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(37, 90), (120, 64)]]
    texts = ["A photo of a Cat.", "a dog"]
    ours = Siglip2Processor.from_pretrained(d)
    ref = HFProcessor(image_processor=Siglip2ImageProcessorPil.from_pretrained(d), tokenizer=_hf_tokenizer(d))
    for kw in ({}, {"max_num_patches": 64}):
        a, b = (
            ours(images=images, text=texts, **kw),
            ref(images=images, text=texts, return_tensors="pt", patch_size=4, **kw),
        )
        assert sorted(a.keys()) == sorted(b.keys())
        for k in b:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=0), k
    assert ours(images=images)["pixel_values"].shape == (2, 256, 4 * 4 * 3)
    assert ours(text="a cat")["input_ids"].shape == (1, 64)

"""Configs: every field and default of transformers' classes, config.json round trips, unknown keys kept."""

import dataclasses
import json

import pytest
import transformers

import siglip2
from siglip2.models.configuration import BaseConfig

PAIRS = [
    (siglip2.Siglip2TextConfig, transformers.Siglip2TextConfig),
    (siglip2.Siglip2VisionConfig, transformers.Siglip2VisionConfig),
    (siglip2.SiglipTextConfig, transformers.SiglipTextConfig),
    (siglip2.SiglipVisionConfig, transformers.SiglipVisionConfig),
]


@pytest.mark.parametrize("ours, theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_defaults_match_transformers(ours, theirs):
    o, t = ours().to_dict(), theirs().to_dict()
    model_fields = {f.name for f in dataclasses.fields(ours)} - {f.name for f in dataclasses.fields(BaseConfig)}
    for name in model_fields:
        assert o[name] == t[name], f"{ours.__name__}.{name}: {o[name]!r} != transformers {t[name]!r}"
    assert o["model_type"] == t["model_type"]


@pytest.mark.parametrize(
    "ours, theirs",
    [(siglip2.Siglip2Config, transformers.Siglip2Config), (siglip2.SiglipConfig, transformers.SiglipConfig)],
)
def test_composite_config_accepts_transformers_object(ours, theirs):
    t = theirs(text_config=dict(hidden_size=96, num_attention_heads=4), vision_config=dict(num_hidden_layers=3))
    o = ours.from_dict(t)
    assert o.text_config.hidden_size == 96 and o.vision_config.num_hidden_layers == 3
    assert o.initializer_factor == t.initializer_factor
    assert o.model_type == t.model_type


def test_config_json_round_trip_keeps_unknown_keys(tmp_path):
    cfg = siglip2.Siglip2Config.from_dict(
        {"model_type": "siglip2", "my_key": [1, 2], "vision_config": {"num_patches": 64, "vision_extra": True}}
    )
    cfg.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["my_key"] == [1, 2] and raw["vision_config"]["vision_extra"] is True
    back = siglip2.Siglip2Config.from_pretrained(tmp_path)
    assert back.to_dict() == cfg.to_dict()
    # transformers reads what we write
    t = transformers.Siglip2Config.from_pretrained(tmp_path)
    assert t.vision_config.num_patches == 64


def test_sub_config_reads_its_part_of_a_full_config(tmp_path):
    siglip2.Siglip2Config(vision_config={"hidden_size": 128, "num_attention_heads": 4}).save_pretrained(tmp_path)
    assert siglip2.Siglip2VisionConfig.from_pretrained(tmp_path).hidden_size == 128


def test_projection_size_defaults_to_hidden_size():
    assert siglip2.Siglip2TextConfig(hidden_size=96, num_attention_heads=4).projection_size == 96


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_size=100, num_attention_heads=12), "divisible"),
        (dict(num_patches=200), "perfect square"),
        (dict(patch_size=[16, 16]), "patch_size"),
    ],
)
def test_invalid_vision_config(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):  # a wrong type is a TypeError naming the field
        siglip2.Siglip2VisionConfig(**kwargs)


def test_wrong_model_type_rejected():
    with pytest.raises(ValueError, match="model_type 'siglip'"):
        siglip2.Siglip2Config.from_dict({"model_type": "siglip"})


def test_num_labels_and_id2label():
    cfg = siglip2.Siglip2Config.from_dict({"num_labels": 5})
    assert cfg.num_labels == 5 and cfg.label2id["LABEL_4"] == 4
    cfg = siglip2.Siglip2Config(num_labels=3, vision_config={"num_patches": 64})  # as transformers' configs take it
    assert cfg.num_labels == 3 and cfg.vision_config.num_patches == 64


# Every bounded field of every config class, one row each, just past its bound (and a wrong type where the
# field is typed): a removed or loosened check fails its row.
BOUNDS = [
    # (class, field, bad value, what the message must name)
    (siglip2.Siglip2TextConfig, "hidden_size", 0, ">= 1"),
    (siglip2.Siglip2TextConfig, "intermediate_size", 0, ">= 1"),
    (siglip2.Siglip2TextConfig, "num_attention_heads", 0, ">= 1"),
    (siglip2.Siglip2TextConfig, "num_hidden_layers", -1, ">= 0"),
    (siglip2.Siglip2TextConfig, "layer_norm_eps", 0.0, r"\(0"),
    (siglip2.Siglip2TextConfig, "attention_dropout", -0.01, r"\[0.0, 1.0\]"),
    (siglip2.Siglip2TextConfig, "attention_dropout", 1.01, r"\[0.0, 1.0\]"),
    (siglip2.Siglip2TextConfig, "attention_dropout", float("nan"), "attention_dropout"),
    (siglip2.Siglip2TextConfig, "vocab_size", 0, ">= 1"),
    (siglip2.Siglip2TextConfig, "max_position_embeddings", 0, ">= 1"),
    (siglip2.Siglip2TextConfig, "projection_size", 0, ">= 1"),
    (siglip2.Siglip2TextConfig, "pad_token_id", 1.5, "an int"),
    (siglip2.Siglip2TextConfig, "hidden_act", 3, "activation"),
    (siglip2.Siglip2VisionConfig, "hidden_size", -64, ">= 1"),
    (siglip2.Siglip2VisionConfig, "num_hidden_layers", -1, ">= 0"),
    (siglip2.Siglip2VisionConfig, "attention_dropout", 2.0, r"\[0.0, 1.0\]"),
    (siglip2.Siglip2VisionConfig, "num_channels", 0, ">= 1"),
    (siglip2.Siglip2VisionConfig, "patch_size", 0, ">= 1"),
    (siglip2.Siglip2VisionConfig, "num_patches", 0, ">= 1"),
    (siglip2.Siglip2VisionConfig, "layer_norm_eps", -1e-6, r"\(0"),
    (siglip2.Siglip2VisionConfig, "vision_use_head", 1, "True or False"),
    (siglip2.SiglipVisionConfig, "image_size", 0, ">= 1"),
    (siglip2.SiglipVisionConfig, "patch_size", -16, ">= 1"),
    (siglip2.Siglip2Config, "initializer_factor", -0.5, r"\[0"),
    (siglip2.Siglip2Config, "output_attentions", "yes", "True or False"),
]


@pytest.mark.parametrize("cls, name, value, match", BOUNDS, ids=[f"{c.__name__}.{n}={v!r}" for c, n, v, _ in BOUNDS])
def test_every_bounded_field_rejects_out_of_range(cls, name, value, match):
    with pytest.raises((ValueError, TypeError), match=match) as e:
        cls(**{name: value})
    assert name in str(e.value)
    cfg = cls()  # set by hand, then validate(): the same check
    setattr(cfg, name, value)
    with pytest.raises((ValueError, TypeError), match=match):
        cfg.validate()


def test_bounds_are_inclusive_where_documented():
    siglip2.Siglip2TextConfig(attention_dropout=0.0)
    siglip2.Siglip2TextConfig(attention_dropout=1.0)
    siglip2.Siglip2VisionConfig(num_hidden_layers=0, num_patches=1, patch_size=1)
    siglip2.Siglip2Config(initializer_factor=0.0)


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from shapes import make_dataset
    from test_tokenization import make_tokenizer_dir

    root = tmp_path_factory.mktemp("train-bounds")
    make_tokenizer_dir(str(root / "tok"), model_type=None)
    return {"data": make_dataset(str(root), 8, seed=0, name="train"), "tok": str(root / "tok"), "root": root}


# TrainConfig's bounded fields: checked by train() before any work, a dry run included (a plan of a run that
# cannot start is wrong).
TRAIN_BOUNDS = [
    ("steps", 0, {}),
    ("steps", -3, {}),
    ("log_every", 0, {}),
    ("warmup", -1, {}),
    ("workers", -1, {}),
    ("save_every", -1, {}),
    ("keep_last", -1, {}),
    ("stop_after", 0, {}),
    ("batch_size", 0, {}),
    ("tokens_per_batch", 0, {"batch_size": None}),
    ("seq_lens", (0,), {}),
    ("epochs", 0.0, {"steps": None}),
    ("epochs", -1.0, {"steps": None}),
    ("lr", 0.0, {}),
    ("lr", float("nan"), {}),
    ("min_lr_ratio", -0.1, {}),
    ("min_lr_ratio", 1.5, {}),
    ("weight_decay", -0.1, {}),
    ("max_grad_norm", -1.0, {}),  # 0 is "off"; a negative one must not silently mean it too
    ("betas", (1.0, 0.95), {}),
    ("betas", (0.9, -0.1), {}),
    ("precision", "fp8", {}),
    ("kernel_impl", "fast", {}),
]


@pytest.mark.parametrize("name, value, extra", TRAIN_BOUNDS)
def test_train_config_bounds(train_data, name, value, extra):
    from siglip2.train import TrainConfig, train

    kw = dict(
        data=train_data["data"],
        model="tiny",
        tokenizer=train_data["tok"],
        out=str(train_data["root"] / "out"),
        workers=0,
        progress=False,
        seq_lens=(32,),
        batch_size=4,
        steps=2,
        dry_run=True,
    )
    kw.update(extra)
    kw[name] = value
    with pytest.raises(ValueError, match=name.replace("_", "[-_]")):
        train(TrainConfig(**kw))

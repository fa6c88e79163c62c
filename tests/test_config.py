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

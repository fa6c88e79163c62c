"""Every model-entry validation error: it names the argument, what was expected and what came."""

import pytest
import torch
from tiny import hf_siglip2, naflex_inputs, text_inputs

import siglip2.fast as fast
import siglip2.reference as ref


@pytest.fixture(scope="module", params=["reference", "triton"])
def model(request):
    hf = hf_siglip2()
    m = (ref if request.param == "reference" else fast).Siglip2Model(hf.config)
    m.load_state_dict(hf.state_dict())
    return m.eval()


def _inputs():
    pv, mask, ss = naflex_inputs([(4, 5), (2, 3)], 24)
    ids, _am = text_inputs(2, 12)
    return dict(input_ids=ids, pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=ss)


def _raises(model, exc, match, **changes):
    kw = _inputs()
    kw.update(changes)
    with pytest.raises(exc, match=match):
        model(**kw)


def test_spatial_shape_zero(model):
    _raises(model, ValueError, r"spatial_shapes\[1\] = \(0, 3\).*h >= 1", spatial_shapes=torch.tensor([[4, 5], [0, 3]]))


def test_spatial_shape_too_large(model):
    _raises(model, ValueError, r"h \* w <= sequence length 24", spatial_shapes=torch.tensor([[5, 5], [2, 3]]))


def test_spatial_shape_disagrees_with_mask(model):
    _raises(
        model,
        ValueError,
        r"pixel_attention_mask\[1\].*first h\*w = 4.*got 6",
        spatial_shapes=torch.tensor([[4, 5], [2, 2]]),
    )


def test_spatial_shapes_float(model):
    _raises(
        model, TypeError, "spatial_shapes must be an integer tensor", spatial_shapes=torch.tensor([[4.0, 5.0], [2, 3]])
    )


def test_spatial_shapes_batch(model):
    _raises(model, ValueError, r"spatial_shapes must have shape \(2, 2\)", spatial_shapes=torch.tensor([[4, 5]]))


def test_pixel_values_feature_dim(model):
    _raises(model, ValueError, "num_channels \\* patch_size\\*\\*2 = 12.*got 10", pixel_values=torch.randn(2, 24, 10))


def test_pixel_values_ndim(model):
    _raises(model, ValueError, "pixel_values must have 3 dimensions", pixel_values=torch.randn(2, 3, 8, 8))


def test_mask_shape(model):
    _raises(
        model,
        ValueError,
        r"pixel_attention_mask must have shape \(2, 24\)",
        pixel_attention_mask=torch.ones(2, 23, dtype=torch.int32),
    )


def test_mask_not_binary(model):
    bad = _inputs()["pixel_attention_mask"] * 2
    _raises(model, ValueError, "only 0/1", pixel_attention_mask=bad)


def test_token_ids_out_of_range(model):
    ids = _inputs()["input_ids"].clone()
    ids[0, 3] = 99
    _raises(model, ValueError, r"input_ids must lie in \[0, vocab_size=99\), got values in \[\d+, 99\]", input_ids=ids)


def test_negative_token_ids(model):
    ids = _inputs()["input_ids"].clone()
    ids[1, 0] = -1
    _raises(model, ValueError, "input_ids must lie in", input_ids=ids)


def test_text_too_long(model):
    _raises(
        model,
        ValueError,
        "sequence length 17, more than max_position_embeddings \\(16\\)",
        input_ids=torch.ones(2, 17, dtype=torch.long),
    )


def test_float_token_ids(model):
    _raises(model, TypeError, "input_ids must be an integer tensor", input_ids=torch.ones(2, 12))


def test_text_mask_shape(model):
    _raises(model, ValueError, r"attention_mask must have shape \(2, 12\)", attention_mask=torch.ones(2, 5))


def test_loss_needs_square_batch(model):
    ids, _ = text_inputs(3, 12)
    _raises(model, ValueError, "square batch.*3 texts and 2 images", input_ids=ids, return_loss=True)


def test_missing_pixel_values(model):
    _raises(model, ValueError, "needs both input_ids and pixel_values", pixel_values=None)


def test_unknown_keyword(model):
    _raises(model, TypeError, "unexpected keyword arguments: \\['pixel_mask'\\]", pixel_mask=None)


def test_fixres_wrong_resolution():
    import transformers
    from tiny import tiny_config_dict

    d = tiny_config_dict()
    d["vision_config"].pop("num_patches")
    d["vision_config"]["image_size"] = 8
    m = ref.SiglipVisionModel(transformers.SiglipVisionConfig(**d["vision_config"]))
    with pytest.raises(ValueError, match=r"shape \(B, 3, 8, 8\).*image_size 8.*got \(1, 3, 10, 10\)"):
        m(torch.randn(1, 3, 10, 10))


def test_input_ids_with_three_dims(model):
    _raises(
        model,
        ValueError,
        r"input_ids must have shape \(B, L\) or \(L,\)",
        input_ids=torch.ones(2, 1, 12, dtype=torch.long),
    )


def test_int32_spatial_shapes_do_not_overflow(model):
    # 65536 * 65536 wraps to 0 in int32: the check must compute h*w in int64
    _raises(
        model,
        ValueError,
        r"spatial_shapes\[0\] = \(65536, 65536\)",
        spatial_shapes=torch.tensor([[65536, 65536], [2, 3]], dtype=torch.int32),
    )


def test_empty_batches_and_empty_texts(model):
    kw = _inputs()
    _raises(
        model,
        ValueError,
        "pixel_values: got a batch of 0 images",
        pixel_values=kw["pixel_values"][:0],
        pixel_attention_mask=kw["pixel_attention_mask"][:0],
        spatial_shapes=kw["spatial_shapes"][:0],
    )
    _raises(
        model,
        ValueError,
        r"input_ids: sequence length 0 \(shape \(2, 0\)\)",
        input_ids=torch.zeros(2, 0, dtype=torch.long),
    )


def test_position_ids_type(model):
    _raises(model, TypeError, "position_ids must be an integer tensor", position_ids=torch.zeros(2, 12))

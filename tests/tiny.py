"""Tiny random SigLIP2 / SigLIP checkpoints and inputs, built locally (no hub): the one place where tests build
model configs and checkpoints.

Every model these helpers return has every parameter perturbed (`perturb_`), so a parity test can see a dropped
bias, a swapped q/k/v bias, a missing LayerNorm or a position table read at the wrong place. A test that builds its
own model must go through `tiny_config_dict` and `perturb_` too.
"""

import torch

VOCAB = 99
# logit scale and bias of a trained SigLIP are far from transformers' init (0, 0): log(10) .. 4.7 and -10 .. -16.
# Values of that kind, scaled down so that sigmoid scores of a tiny random model stay away from 0 and 1.
LOGIT_SCALE, LOGIT_BIAS = 2.3, -1.7


def tiny_config_dict(
    hidden=64,
    heads=4,
    layers=2,
    patch=2,
    num_patches=16,
    projection=None,
    use_head=True,
    vocab=VOCAB,
    max_positions=16,
    intermediate=None,
    image_size=None,
):
    """{"text_config", "vision_config"} for transformers' or our config classes. `intermediate` defaults to
    2 * hidden + 6 (not a multiple of any block size); `image_size` makes a FixRes (SigLIP) vision config."""
    inter = 2 * hidden + 6 if intermediate is None else intermediate
    text = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_positions,
        projection_size=projection,
    )
    vision = dict(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        patch_size=patch,
    )
    if image_size is None:
        vision.update(num_patches=num_patches, vision_use_head=use_head)
    else:
        vision.update(image_size=image_size)
    return dict(text_config=text, vision_config=vision)


def perturb_(model, seed=1, scale=0.1):
    """Add noise of a realistic size to every parameter, in place; logit scale and bias start from trained-like
    values. transformers' init leaves biases at 0 or 1e-6, LayerNorms at (1, 0) and logit scale/bias at 0, so a
    parity test on a fresh model cannot see a dropped bias, a swapped q/k/v bias or a missing norm; with every
    parameter perturbed it can."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in (("logit_scale", LOGIT_SCALE), ("logit_bias", LOGIT_BIAS)):
            p = getattr(model, name, None)
            if isinstance(p, torch.Tensor):
                p.fill_(value)
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
    return model


def hf_model(kind="Siglip2Model", seed=0, num_labels=None, **kw):
    """A tiny random transformers model, every parameter perturbed. kind: Siglip2Model, Siglip2VisionModel,
    Siglip2ForImageClassification or SiglipModel (FixRes: pass image_size, default 8 = a 4x4 grid of 2x2 patches).
    `kw` goes to tiny_config_dict."""
    import transformers

    torch.manual_seed(seed)
    extra = {} if num_labels is None else dict(num_labels=num_labels)
    if kind == "SiglipModel":
        cfg = transformers.SiglipConfig(**tiny_config_dict(**dict(dict(image_size=8), **kw)), **extra)
    elif kind == "Siglip2VisionModel":
        cfg = transformers.Siglip2VisionConfig(**tiny_config_dict(**kw)["vision_config"], **extra)
    else:
        cfg = transformers.Siglip2Config(**tiny_config_dict(**kw), **extra)
    return perturb_(getattr(transformers, kind)(cfg).eval(), seed + 1)


def hf_siglip2(seed=0, **kw):
    """A tiny random transformers.Siglip2Model with every parameter perturbed (see perturb_)."""
    return hf_model("Siglip2Model", seed, **kw)


def our_model(cls, seed=0, **kw):
    """A tiny random model of one of our classes (siglip2.reference.X, siglip2.fast.X), every parameter perturbed;
    its config is our own config class built from tiny_config_dict(**kw)."""
    torch.manual_seed(seed)
    d = tiny_config_dict(**kw)
    cfg_cls = cls.config_class
    if "Vision" in cls.__name__:
        cfg = cfg_cls(**d["vision_config"])
    elif "Text" in cls.__name__:
        cfg = cfg_cls(**d["text_config"])
    else:
        cfg = cfg_cls(**d)
    return perturb_(cls(cfg).eval(), seed + 1)


# the pipeline / CLI checkpoints: a vocabulary that holds tests/test_tokenization.py's tokenizer (261 + merges),
# 4-pixel patches and 16 positions, as the processor config that _image_processor_dir writes (P=4, M=16)
PIPELINE = dict(hidden=32, heads=4, patch=4, num_patches=16, vocab=512, max_positions=64, intermediate=64)


def save_pipeline_checkpoint(d, kind="Siglip2Model", seed=0, **kw):
    """A perturbed transformers model saved to `d` with the test tokenizer and image processor files; returns the
    model. kind "SiglipModel" is FixRes at 16 x 16 pixels (the caller writes its preprocessor_config.json)."""
    from test_tokenization import _image_processor_dir, make_tokenizer_dir

    opts = dict(PIPELINE, **kw)
    if kind == "SiglipModel":
        opts = dict(opts, image_size=opts.get("image_size", 16))
    model = hf_model(kind, seed, **opts)
    model.save_pretrained(d)
    make_tokenizer_dir(d, model_type=None)  # config.json comes from save_pretrained
    if kind != "SiglipModel":
        _image_processor_dir(d, P=opts["patch"], M=opts["num_patches"])
    return model


def naflex_inputs(shapes, L, patch=2, channels=3, seed=0):
    """pixel_values (B, L, C*P*P) with zero padding rows, int32 mask, int64 spatial_shapes, for (h, w) grids."""
    g = torch.Generator().manual_seed(seed)
    B = len(shapes)
    pv = torch.zeros(B, L, channels * patch * patch)
    mask = torch.zeros(B, L, dtype=torch.int32)
    for i, (h, w) in enumerate(shapes):
        pv[i, : h * w] = torch.randn(h * w, channels * patch * patch, generator=g)
        mask[i, : h * w] = 1
    return pv, mask, torch.tensor(shapes, dtype=torch.int64)


def text_inputs(B, L, seed=0, pad_from=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.int64)
    if pad_from is not None:
        for i, n in enumerate(pad_from):
            ids[i, n:] = 0
            mask[i, n:] = 0
    return ids, mask

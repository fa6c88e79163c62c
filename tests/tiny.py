"""Tiny random SigLIP2 / SigLIP checkpoints and inputs, built locally (no hub), for the model tests."""
import torch

VOCAB = 99


def tiny_config_dict(hidden=64, heads=4, layers=2, patch=2, num_patches=16, projection=None, use_head=True):
    text = dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden + 6, num_hidden_layers=layers,
                num_attention_heads=heads, max_position_embeddings=16, projection_size=projection)
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden + 6, num_hidden_layers=layers,
                  num_attention_heads=heads, patch_size=patch, num_patches=num_patches, vision_use_head=use_head)
    return dict(text_config=text, vision_config=vision)


def perturb_(model, seed=1, scale=0.1):
    """Add noise of a realistic size to every parameter, in place. transformers' init leaves biases at 0 or 1e-6,
    LayerNorms at (1, 0) and logit scale/bias at 0, so a parity test on a fresh model cannot see a dropped bias, a
    swapped q/k/v bias or a missing norm; with every parameter perturbed it can."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
    return model


def hf_siglip2(seed=0, **kw):
    """A tiny random transformers.Siglip2Model with every parameter perturbed (see perturb_)."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.Siglip2Config(**tiny_config_dict(**kw))
    model = transformers.Siglip2Model(cfg).eval()
    perturb_(model, seed + 1)
    with torch.no_grad():  # transformers inits logit_scale/bias to 0; make them matter
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-1.7)
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

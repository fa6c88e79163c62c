"""Zero-shot image classification, as transformers' pipeline does it for SigLIP: sigmoid scores, not softmax.

Images are EXIF-transposed and converted to RGB, processed by the checkpoint's own image processor (its saved
patch_size, checked against config.json, and max_num_patches, not the Processor's default of 256 patches), and the
texts `template.format(label)` are padded to 64 tokens with truncation. Scores are sorted descending with a stable
sort, so ties keep the label order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .checkpoints.loading import CheckpointError, resolve_dir

if TYPE_CHECKING:
    from torch import nn

    from .models.modeling import Siglip2Model
    from .processing.image_processing import Images

DEFAULT_MODEL = "google/siglip2-base-patch16-naflex"
DEFAULT_TEMPLATE = "This is a photo of {}."
# Upper bound on the NaFlex patch budget per image: SigLIP2 NaFlex checkpoints are trained and evaluated with up to
# 1024 patches; 4096 (a 1024 x 1024 image at patch 16) leaves room while keeping the reference attention's
# memory (quadratic in the patch count) bounded. 100000 patches would need hundreds of GB.
MAX_NUM_PATCHES = 4096
_WHY_MAX = f" (SigLIP2 NaFlex uses up to 1024; memory grows with its square, so at most {MAX_NUM_PATCHES})"


def check_max_num_patches(value: object, name: str = "max_num_patches") -> int | None:
    """None (the checkpoint's own budget) or an int in [1, MAX_NUM_PATCHES]."""
    from .processing.image_utils import positive_int

    return None if value is None else positive_int(name, value, MAX_NUM_PATCHES, _WHY_MAX)


def resolve_device(name: object, arg: str = "--device") -> torch.device:
    """The torch.device for a user's device name, checked before anything is loaded: None is cuda when a GPU is
    visible, else cpu; an unknown name, a device type the models do not run on (meta, tpu, ...) or a device this
    machine lacks (cuda without a GPU, cuda:N past the last one, mps off Apple silicon) is a ValueError naming `arg`.
    "cuda" keeps no index (callers that run one process per GPU pick theirs)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)  # pyright: ignore[reportArgumentType]
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"{arg}: unknown device {name!r} (expected cpu, cuda, cuda:N or mps)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"{arg} {name}: {why}; use {arg} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{arg} {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"{arg} {name}: MPS is not available in this torch build or machine; use {arg} cpu")
    elif dev.type != "cpu":
        raise ValueError(f"{arg}: unsupported device type {dev.type!r} (expected cpu, cuda, cuda:N or mps)")
    return dev


def check_template(template: object, name: str = "template") -> str:
    """A str.format template with exactly one positional field, `{}`, where the label goes."""
    import string

    if not isinstance(template, str):
        raise TypeError(
            f"{name}: expected a string with one '{{}}' where the label goes, got {type(template).__name__}"
        )
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:  # a lone '{' or '}'
        raise ValueError(
            f"{name}: not a valid format string ({e}); write literal braces as '{{{{' and '}}}}', got {template!r}"
        ) from e
    if len(fields) != 1 or fields[0] not in ("", "0"):
        what = "no field" if not fields else ", ".join("{" + f + "}" for f in fields)
        raise ValueError(
            f"{name}: must contain exactly one '{{}}' where the label goes (and no named or other "
            f"fields), got {template!r} with {what}"
        )
    try:
        template.format("label")
    except (ValueError, IndexError, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"{name}: {template!r} cannot be filled with a label ({type(e).__name__}: {e})") from e
    return template


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    **hub_kwargs: Any,
) -> tuple[Siglip2Model, str]:
    """Our fast model class for the checkpoint's model_type: Siglip2Model (NaFlex) or SiglipModel (FixRes)."""
    from .checkpoints.loading import read_model_type

    d = resolve_dir(name_or_path, **hub_kwargs)
    model_type = read_model_type(d)  # a missing config.json and a `{}` are different errors, both naming the file
    from . import fast

    if model_type == "siglip2":
        cls = fast.Siglip2Model
    elif model_type == "siglip":
        cls = fast.SiglipModel
    else:
        raise CheckpointError(f"{d}: model_type {model_type!r} is not a SigLIP / SigLIP2 dual encoder")
    model = cls.from_pretrained(d, device=device, dtype=dtype)
    model.eval()
    return model, d


def load_images(images: Images) -> tuple[list, bool]:
    """Paths and PIL images are EXIF-transposed and converted to RGB (as transformers' load_image); arrays and
    tensors pass through to the processor, which converts them. Returns (list, was_single)."""
    import numpy as np
    import PIL.Image
    import PIL.ImageOps

    from .processing.image_utils import open_image, pil_to_rgb

    if isinstance(images, (list, tuple)) or (isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4):
        items, single = list(images), False
    else:
        items, single = [images], True
    if not items:
        raise ValueError("images: got an empty list")
    out = []
    for i, img in enumerate(items):
        name = f"images[{i}]" if not single else "images"
        if isinstance(img, (str, os.PathLike)):
            img = open_image(img, name)
        elif isinstance(img, PIL.Image.Image):
            img = PIL.ImageOps.exif_transpose(img)
        out.append(pil_to_rgb(img, name) if isinstance(img, PIL.Image.Image) else img)
    return out, single


def _prepare(model: str | os.PathLike | nn.Module, processor: Any) -> tuple[Any, Any]:
    if isinstance(model, (str, os.PathLike)):
        model, directory = load_model(model)
        if processor is None:
            from .processing.processor import Siglip2Processor

            processor = Siglip2Processor.from_pretrained(directory)
    if processor is None:
        raise ValueError(
            "processor: required when `model` is a model object "
            "(use siglip2.Siglip2Processor.from_pretrained(checkpoint_dir))"
        )
    for attr in ("config", "dtype", "device"):
        if not hasattr(model, attr):
            raise TypeError(
                f"model: expected a SigLIP model (with .{attr}) or a checkpoint path, got {type(model).__name__}"
            )
    return model, processor


def _image_inputs(processor: Any, images: list, model: Any, max_num_patches: int | None) -> dict[str, torch.Tensor]:
    from .processing.image_processing import Siglip2ImageProcessor

    kw = (
        {"max_num_patches": max_num_patches}
        if max_num_patches and isinstance(processor.image_processor, Siglip2ImageProcessor)
        else {}
    )
    inputs = processor.image_processor(images, **kw)
    return {k: v.to(model.device, dtype=model.dtype if v.is_floating_point() else None) for k, v in inputs.items()}


def _text_inputs(
    processor: Any, texts: list[str], model: Any, tokenizer_kwargs: dict | None
) -> dict[str, torch.Tensor]:
    kw: dict[str, Any] = {"padding": True}
    if "siglip" in str(getattr(model.config, "model_type", "")):
        kw = {"padding": "max_length", "max_length": 64, "truncation": True}
    kw.update(tokenizer_kwargs or {})
    return {k: v.to(model.device) for k, v in processor.tokenizer(texts, **kw).items()}


@torch.no_grad()
def zero_shot_classify(
    images: Images,
    candidate_labels: str | Sequence[str],
    model: str | os.PathLike | nn.Module = DEFAULT_MODEL,
    template: str = DEFAULT_TEMPLATE,
    processor: Any = None,
    *,
    max_num_patches: int | None = None,
    batch_size: int = 32,
    tokenizer_kwargs: dict | None = None,
) -> list[Any]:
    """Score each image against `candidate_labels`.

    images: a path, PIL image, array or tensor, or a list of them. candidate_labels: a list of strings (or one
    comma-separated string). model: a model object (then pass `processor`) or a checkpoint directory / hub id.
    Returns, per image, a list of {"score", "label"} sorted by descending score (one list for one image).
    """
    if isinstance(candidate_labels, str):
        candidate_labels = [s.strip() for s in candidate_labels.split(",") if s.strip()]
    labels = list(candidate_labels)
    if not labels or not all(isinstance(label, str) for label in labels):
        raise ValueError(f"candidate_labels: expected a non-empty list of strings, got {candidate_labels!r}")
    from .processing.image_utils import positive_int

    check_template(template)
    batch_size = positive_int("batch_size", batch_size)
    max_num_patches = check_max_num_patches(max_num_patches)
    net, processor = _prepare(model, processor)
    imgs, single = load_images(images)
    text_inputs = _text_inputs(processor, [template.format(label) for label in labels], net, tokenizer_kwargs)
    sigmoid = "siglip" in str(getattr(net.config, "model_type", ""))
    results = []
    for start in range(0, len(imgs), batch_size):
        image_inputs = _image_inputs(processor, imgs[start : start + batch_size], net, max_num_patches)
        logits = net(**text_inputs, **image_inputs).logits_per_image.float()  # [I, T]
        probs = logits.sigmoid() if sigmoid else logits.softmax(-1)
        for row in probs.cpu().tolist():
            order = sorted(range(len(labels)), key=lambda j: -row[j])
            results.append([{"score": row[j], "label": labels[j]} for j in order])
    return results[0] if single else results


def pooled(out: Any) -> torch.Tensor:
    """get_*_features returns a tensor (4.x style) or an output with .pooler_output (5.x style)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def embed(
    images: Images | None = (),
    texts: str | Sequence[str] | None = (),
    model: str | os.PathLike | nn.Module = DEFAULT_MODEL,
    processor: Any = None,
    *,
    max_num_patches: int | None = None,
    batch_size: int = 32,
    normalize: bool = True,
) -> dict[str, torch.Tensor]:
    """L2-normalized (or raw pooled) embeddings {"image_embeds": (I, D), "text_embeds": (T, D)}, float32."""
    from .processing.image_utils import positive_int

    if isinstance(texts, str):
        texts = [texts]
    batch_size = positive_int("batch_size", batch_size)
    max_num_patches = check_max_num_patches(max_num_patches)
    net, processor = _prepare(model, processor)
    out = {}
    # one path, PIL image, array or tensor -> a list of one
    image_list: list = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
    if image_list:
        imgs, _ = load_images(image_list)
        chunks = [
            pooled(net.get_image_features(**_image_inputs(processor, imgs[s : s + batch_size], net, max_num_patches)))
            for s in range(0, len(imgs), batch_size)
        ]
        out["image_embeds"] = torch.cat(chunks).float()
    if texts is not None and len(texts):
        texts = list(texts)
        chunks = [
            pooled(net.get_text_features(**_text_inputs(processor, texts[s : s + batch_size], net, None)))
            for s in range(0, len(texts), batch_size)
        ]
        out["text_embeds"] = torch.cat(chunks).float()
    if normalize:
        out = {k: v / v.norm(p=2, dim=-1, keepdim=True) for k, v in out.items()}
    return {k: v.cpu().contiguous() for k, v in out.items()}

"""The image + text processors: `Siglip2Processor` (NaFlex) and `SiglipProcessor` (FixRes), as transformers' own:
one call turns images and texts into the model's inputs with the checkpoint's image processor and tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

from ..checkpoints.loading import resolve_dir
from .image_processing import (
    BatchFeature,
    Device,
    Images,
    Siglip2ImageProcessor,
    SiglipImageProcessor,
    image_processor_from_pretrained,
)
from .tokenization import Siglip2Tokenizer


class Siglip2Processor:
    """Images + text -> the model's keys. Defaults as transformers' Siglip2Processor: text padded to 64 with
    truncation; images at max_num_patches=256 (overriding the image processor's saved one). The patch size is the
    image processor's own (preprocessor_config.json, checked against config.json by `from_pretrained`), not a
    fixed 16: transformers 5.24's combined call passes patch_size=16 whatever the checkpoint, which a model with
    another patch size then rejects. An explicit `patch_size=` is used as given, as in transformers."""

    text_defaults: ClassVar[dict] = {"padding": "max_length", "truncation": True, "max_length": 64}
    # patch_size None: the image processor's own
    image_defaults: ClassVar[dict] = {"max_num_patches": 256, "patch_size": None}

    def __init__(
        self, image_processor: Siglip2ImageProcessor | SiglipImageProcessor, tokenizer: Siglip2Tokenizer
    ) -> None:
        self.image_processor, self.tokenizer = image_processor, tokenizer

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, backend: str = "pil", **hub_kwargs: Any
    ) -> Siglip2Processor:
        d = resolve_dir(name_or_path, **hub_kwargs)
        ip = image_processor_from_pretrained(d, backend=backend)
        tok = Siglip2Tokenizer.from_pretrained(d)
        if cls is Siglip2Processor and not isinstance(ip, Siglip2ImageProcessor):
            cls = SiglipProcessor
        return cls(ip, tok)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        self.image_processor.save_pretrained(save_directory)
        self.tokenizer.save_pretrained(save_directory)

    def __call__(
        self,
        images: Images | None = None,
        text: str | Sequence[str] | None = None,
        *,
        return_tensors: str = "pt",
        backend: str | None = None,
        device: Device = None,
        **kwargs: Any,
    ) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("Siglip2Processor: pass images=..., text=... or both")
        out = BatchFeature()
        text_kw = {k: kwargs.pop(k, v) for k, v in self.text_defaults.items()}
        for k in ("return_attention_mask", "add_special_tokens"):
            if k in kwargs:
                text_kw[k] = kwargs.pop(k)
        image_kw = {k: kwargs.pop(k, v) for k, v in self.image_defaults.items()}
        if kwargs:
            raise TypeError(f"Siglip2Processor: unexpected keyword arguments {sorted(kwargs)}")
        if text is not None:
            out.update(self.tokenizer(text, return_tensors=return_tensors, **text_kw))
        if images is not None:
            if not isinstance(self.image_processor, Siglip2ImageProcessor):
                image_kw = {}
            out.update(
                self.image_processor(images, return_tensors=return_tensors, backend=backend, device=device, **image_kw)
            )
        return out

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)


class SiglipProcessor(Siglip2Processor):
    """FixRes processor: transformers' SiglipProcessor has no text padding defaults."""

    text_defaults: ClassVar[dict] = {"padding": False, "truncation": None, "max_length": None}
    image_defaults: ClassVar[dict] = {}

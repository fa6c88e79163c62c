"""Image processors: `Siglip2ImageProcessor` (NaFlex patches) and `SiglipImageProcessor` (FixRes, fixed size).

Both match transformers' PIL backends (`Siglip2ImageProcessorPil`, `SiglipImageProcessorPil`): the same target
size, the same PIL resize of the uint8 image, rescale in float64 then float32 normalize, the same patch order.
`backend="torch"` runs resize, normalize and patchify as batched torch ops on the images' device (the GPU when
the tensors are there) with Pillow's fixed-point arithmetic, see `image_utils.resize_uint8`.
Differences from transformers, on purpose: every input is converted to RGB (transformers' NaFlex processor
crashes on grayscale and RGBA), float arrays in [0, 1] are read as intensities (transformers rescales them
twice), and 16-bit images are scaled to 8 bits.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import numpy as np
import torch

from ..checkpoints.loading import CheckpointError, atomic_write_text, checkpoint_file, read_json_object, resolve_dir
from .image_utils import get_image_size_for_max_num_patches, positive_int, resize_uint8, tensor_to_rgb, to_rgb_uint8

if TYPE_CHECKING:
    import PIL.Image
    from typing_extensions import Self

PREPROCESSOR_CONFIG = "preprocessor_config.json"
# What the processors (and the pipeline) accept as one image, and as a batch of images.
ImageInput: TypeAlias = "str | os.PathLike[str] | PIL.Image.Image | np.ndarray | torch.Tensor"
Images: TypeAlias = "ImageInput | Sequence[ImageInput]"
Device: TypeAlias = "torch.device | str | None"


class BatchFeature(dict):
    """A dict with attribute access and `.to(device)`, like transformers' BatchFeature."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e

    def to(self, device: Device | torch.dtype = None, dtype: torch.dtype | None = None) -> BatchFeature:
        """Move tensors to `device`; cast floating tensors to `dtype`. `.to(torch.bfloat16)` casts only."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        out = BatchFeature()
        for k, v in self.items():
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else None)
            out[k] = v
        return out


def as_image_list(images: Images, name: str = "images") -> list:
    """One image, a list/tuple of images, a (B, C, H, W) tensor or a (B, H, W, C) array -> a list."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.unbind(0))
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{name}: got an empty list")
        return list(images)
    return [images]


def _scalar(x: Any) -> Any:
    """A NumPy or torch scalar as a Python number (what the field checks compare); anything else as it is."""
    item = getattr(x, "item", None)
    return item() if callable(item) else x


def check_processor_fields(d: dict) -> dict:
    """The common processor settings present in `d`, checked and normalized (image_mean/std as 3 floats): a
    TypeError/ValueError naming the field, what was expected and what came. The one place these fields are checked,
    for keywords and config files alike (`read_preprocessor_config` adds the file's name)."""
    import numbers

    def real(key: str, x: object) -> float:
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
            raise TypeError(f"{key}: expected a finite number, got {type(x).__name__} {x!r}")
        return float(x)

    out = {}
    for key in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
        # hub files hold "do_convert_rgb": null (transformers' "the default"); every image is converted anyway
        if key in d and not isinstance(d[key], (bool, np.bool_)) and not (key == "do_convert_rgb" and d[key] is None):
            raise TypeError(f"{key}: expected true or false, got {type(d[key]).__name__} {d[key]!r}")
    if "resample" in d:
        r = d["resample"]
        if isinstance(r, bool) or not isinstance(r, numbers.Integral) or not 0 <= int(r) <= 5:
            raise ValueError(
                f"resample: expected a PIL filter code 0-5 (2 = bilinear, 3 = bicubic), got {type(r).__name__} {r!r}"
            )
    if "rescale_factor" in d:
        out["rescale_factor"] = real("rescale_factor", d["rescale_factor"])
        if out["rescale_factor"] <= 0:
            raise ValueError(f"rescale_factor: expected a number > 0 such as 1/255, got {d['rescale_factor']!r}")
    for key in ("image_mean", "image_std"):
        if key not in d:
            continue
        v = d[key]
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            v = [v] * 3
        if not isinstance(v, (list, tuple, np.ndarray, torch.Tensor)) or len(v) != 3:
            raise ValueError(f"{key}: expected 3 numbers (R, G, B) or one number, got {v!r}")
        v = out[key] = [real(f"{key}[{i}]", _scalar(x)) for i, x in enumerate(v)]
        if key == "image_std" and not all(math.isfinite(x) and x != 0 for x in v):
            # normalization divides by it: a 0 or inf gives NaN / zero pixels and NaN scores, silently
            raise ValueError(f"image_std: expected 3 finite non-zero values, got {v}")
    for key in ("patch_size", "max_num_patches"):
        if key in d:
            positive_int(key, d[key])
    if d.get("size") is not None:  # NaFlex files may carry a null size, which they never read
        SiglipImageProcessor._size(d["size"])
    return out


class _ImageProcessor:
    """Shared config handling: attributes from defaults + kwargs, unknown config keys kept for saving."""

    _defaults: ClassVar[dict] = {}
    _transformers_type = ""
    # Set in __init__ from `_defaults`, the config file and the keywords; declared here for type checkers.
    do_resize: bool
    resample: int
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: list[float]
    image_std: list[float]
    do_convert_rgb: bool

    def __init__(self, backend: str = "pil", device: Device = None, **kwargs: Any) -> None:
        if backend not in ("pil", "torch"):
            raise ValueError(f"backend: expected 'pil' or 'torch', got {backend!r}")
        self.backend, self.device = backend, device
        self.extra = {k: v for k, v in kwargs.items() if k not in self._defaults}
        for k, v in self._defaults.items():
            setattr(self, k, kwargs.get(k, v))
        for k, v in check_processor_fields({k: getattr(self, k) for k in self._defaults}).items():
            setattr(self, k, v)
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Size fields as positive ints: a 0 or 2.5 from a config file is an error, not a default or a truncation."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._defaults)
        return f"{type(self).__name__}({fields}, backend={self.backend!r})"

    def to_dict(self) -> dict:
        d = dict(self.extra)
        d.update({k: getattr(self, k) for k in self._defaults})
        d["image_processor_type"] = self.extra.get("image_processor_type", self._transformers_type)
        return d

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `preprocessor_config.json` (temp file + rename)."""
        os.makedirs(save_directory, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write_text(os.path.join(save_directory, PREPROCESSOR_CONFIG), text)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> Self:
        """Read `preprocessor_config.json` from a directory or hub id; `kwargs` (backend too) override it."""
        hub = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "local_files_only") if k in kwargs}
        directory = resolve_dir(name_or_path, **hub)
        d = read_preprocessor_config(directory)
        if "patch_size" in cls._defaults:
            d = _with_model_patch_size(directory, d, kwargs)
        d.update(kwargs)
        return cls(**d)

    def _lut(self) -> np.ndarray:
        """(3, 256) float32 table of rescale + normalize for each uint8 value, computed with the same numpy
        arithmetic as transformers (float64 rescale cast to float32, then float32 (x - mean) / std)."""
        x = np.arange(256)
        x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32) if self.do_rescale else x.astype(np.float32)
        x = np.broadcast_to(x, (3, 256))
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)[:, None]
            std = np.asarray(self.image_std, dtype=np.float32)[:, None]
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)

    def _lut_tensor(self, device: torch.device | str) -> torch.Tensor:
        return torch.from_numpy(self._lut()).to(device)

    def _load_all(self, images: Images, backend: str, device: Device) -> list:
        """Decode/convert every image: HWC uint8 numpy for the PIL backend, CHW uint8 tensors for torch."""
        out = []
        for i, img in enumerate(as_image_list(images)):
            name = f"images[{i}]"
            rgb = to_rgb_uint8(img, name)
            if backend == "pil":
                out.append(rgb.permute(1, 2, 0).cpu().numpy() if isinstance(rgb, torch.Tensor) else np.asarray(rgb))
            else:
                t = rgb if isinstance(rgb, torch.Tensor) else torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
                dev = device if device is not None else t.device
                out.append(tensor_to_rgb(t.to(dev), name))
        return out

    def _resize_pil(self, a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        import PIL.Image

        if a.shape[:2] == tuple(size):
            return a
        return np.asarray(PIL.Image.fromarray(a).resize((size[1], size[0]), resample=int(self.resample)))


def model_patch_size(directory: str) -> int | None:
    """The vision tower's patch_size from `directory`'s config.json (a dual encoder's vision_config, or a vision
    model's own), or None when there is no config.json or it names none."""
    path = os.path.join(directory, "config.json")
    cfg = read_json_object(path, required=False, read_from=checkpoint_file(directory, "config.json"))
    if cfg is None:
        return None
    vision = cfg.get("vision_config", cfg)
    value = vision.get("patch_size") if isinstance(vision, dict) else None
    if value is None:
        return None
    try:
        return positive_int(f"{path}: patch_size", value)
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from e


def _with_model_patch_size(directory: str, d: dict, kwargs: dict) -> dict:
    """A NaFlex preprocessor config whose patch_size is the model's (config.json): filled in when the file has none
    (never a silent 16), refused when the two files disagree (the model cannot read such pixel_values). A
    `patch_size` passed by the caller wins over both, as in transformers."""
    P = model_patch_size(directory)
    if P is None or "patch_size" in kwargs:
        return d
    if "patch_size" not in d:
        return dict(d, patch_size=P)
    if d["patch_size"] != P:
        raise CheckpointError(
            f"{directory}: {PREPROCESSOR_CONFIG} has patch_size {d['patch_size']!r} but config.json's vision tower "
            f"has patch_size {P}; the model's patch embedding reads {P}x{P} patches (fix one of the files, or pass "
            f"patch_size= explicitly)"
        )
    return d


def read_preprocessor_config(directory: str) -> dict:
    path = os.path.join(directory, PREPROCESSOR_CONFIG)
    d = read_json_object(path, what=" of processor settings")
    assert d is not None  # required
    try:
        check_processor_fields(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from e
    return d


class Siglip2ImageProcessor(_ImageProcessor):
    """NaFlex: resize each image to at most `max_num_patches` patches of `patch_size` (aspect ratio
    about kept), patchify row-major with (py, px, c) order inside a patch, pad to `max_num_patches`.

    Returns `pixel_values` float32 (B, max_num_patches, P*P*3), `pixel_attention_mask` int32
    (B, max_num_patches) and `spatial_shapes` int64 (B, 2) = (h, w) patch grid.
    """

    _defaults: ClassVar[dict] = dict(
        do_resize=True,
        resample=2,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        patch_size=16,
        max_num_patches=256,
        do_convert_rgb=True,
    )
    _transformers_type = "Siglip2ImageProcessor"
    model_input_names: ClassVar[list[str]] = ["pixel_values", "pixel_attention_mask", "spatial_shapes"]
    patch_size: int
    max_num_patches: int

    def __call__(self, images: Images, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def _check_sizes(self) -> None:
        self.patch_size = positive_int("patch_size", self.patch_size)
        self.max_num_patches = positive_int("max_num_patches", self.max_num_patches)

    def _sizes(self, patch_size: int | None, max_num_patches: int | None) -> tuple[int, int]:
        """None means the processor's own value; anything else must be a positive int (0 is not "default")."""
        P = self.patch_size if patch_size is None else positive_int("patch_size", patch_size)
        M = self.max_num_patches if max_num_patches is None else positive_int("max_num_patches", max_num_patches)
        return P, M

    def target_size(
        self, height: int, width: int, patch_size: int | None = None, max_num_patches: int | None = None
    ) -> tuple[int, int]:
        return get_image_size_for_max_num_patches(height, width, *self._sizes(patch_size, max_num_patches))

    def preprocess(
        self,
        images: Images,
        *,
        patch_size: int | None = None,
        max_num_patches: int | None = None,
        return_tensors: str = "pt",
        backend: str | None = None,
        device: Device = None,
    ) -> BatchFeature:
        """images: a path, PIL image, numpy (H, W[, C]) array, torch ([C, ]H, W) tensor, or a list of them."""
        P, M = self._sizes(patch_size, max_num_patches)
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors: expected 'pt' or 'np', got {return_tensors!r}")
        backend = backend or self.backend
        if backend not in ("pil", "torch"):
            raise ValueError(f"backend: expected 'pil' or 'torch', got {backend!r}")
        imgs = self._load_all(images, backend, device or self.device)
        sizes = []
        for i, img in enumerate(imgs):
            h, w = img.shape[-2:] if backend == "torch" else img.shape[:2]
            if self.do_resize:
                sizes.append(self.target_size(h, w, P, M))
            else:
                if h % P or w % P or (h // P) * (w // P) > M:
                    raise ValueError(
                        f"images[{i}]: with do_resize=False the size ({h}x{w}) must be a multiple of "
                        f"patch_size {P} with at most max_num_patches {M} patches"
                    )
                sizes.append((h, w))
        spatial = torch.tensor([[h // P, w // P] for h, w in sizes], dtype=torch.int64)
        if backend == "pil":
            out = self._patchify_pil(imgs, sizes, P, M)
        else:
            out = self._patchify_torch(imgs, sizes, P, M)
            spatial = spatial.to(out["pixel_values"].device)
        out["spatial_shapes"] = spatial
        if return_tensors == "np":
            out = {k: v.cpu().numpy() for k, v in out.items()}
        return BatchFeature(out)

    def _patchify_pil(self, imgs: list, sizes: list[tuple[int, int]], P: int, M: int) -> dict:
        lut_t = self._lut().T.copy()  # (256, 3)
        values = np.zeros((len(imgs), M, P * P * 3), dtype=np.float32)
        mask = np.zeros((len(imgs), M), dtype=np.int32)
        for i, (a, (th, tw)) in enumerate(zip(imgs, sizes)):
            a = self._resize_pil(a, (th, tw))
            x = lut_t[a, np.arange(3)]  # [th, tw, 3]
            h, w = th // P, tw // P
            patches = x.reshape(h, P, w, P, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, P * P * 3)
            values[i, : h * w] = patches
            mask[i, : h * w] = 1
        return {"pixel_values": torch.from_numpy(values), "pixel_attention_mask": torch.from_numpy(mask)}

    def _patchify_torch(self, imgs: list, sizes: list[tuple[int, int]], P: int, M: int) -> dict:
        dev = imgs[0].device
        if any(t.device != dev for t in imgs):
            raise ValueError("images: with backend='torch' all tensors must be on one device (or pass device=...)")
        lut = self._lut_tensor(dev)
        values = torch.zeros(len(imgs), M, P * P * 3, dtype=torch.float32, device=dev)
        mask = torch.zeros(len(imgs), M, dtype=torch.int32, device=dev)
        groups: dict = {}
        for i, (t, s) in enumerate(zip(imgs, sizes)):
            groups.setdefault((tuple(t.shape[-2:]), s), []).append(i)
        chan = torch.arange(3, device=dev)[None, :, None, None]
        for (_, (th, tw)), idx in groups.items():
            x = resize_uint8(torch.stack([imgs[i] for i in idx]), (th, tw), int(self.resample))
            x = lut[chan, x.long()]  # [B, 3, th, tw]
            h, w = th // P, tw // P
            x = x.view(len(idx), 3, h, P, w, P).permute(0, 2, 4, 3, 5, 1).reshape(len(idx), h * w, P * P * 3)
            rows = torch.tensor(idx, device=dev)
            values[rows, : h * w] = x
            mask[rows, : h * w] = 1
        return {"pixel_values": values, "pixel_attention_mask": mask}


class SiglipImageProcessor(_ImageProcessor):
    """FixRes: resize to `size` = {"height", "width"} exactly (aspect ratio not kept), rescale, normalize.
    Returns `pixel_values` float32 (B, 3, H, W)."""

    _defaults: ClassVar[dict] = dict(
        do_resize=True,
        resample=3,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"height": 224, "width": 224},
        do_convert_rgb=True,
    )
    _transformers_type = "SiglipImageProcessor"
    model_input_names: ClassVar[list[str]] = ["pixel_values"]
    size: dict

    def _check_sizes(self) -> None:
        self._size(self.size)

    @staticmethod
    def _size(size: object) -> tuple[int, int]:
        if not isinstance(size, dict) or "height" not in size or "width" not in size:
            raise ValueError(f"size: expected {{'height': H, 'width': W}}, got {size!r}")
        return positive_int("size['height']", size["height"]), positive_int("size['width']", size["width"])

    def __call__(self, images: Images, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(
        self,
        images: Images,
        *,
        size: dict | None = None,
        return_tensors: str = "pt",
        backend: str | None = None,
        device: Device = None,
    ) -> BatchFeature:
        H, W = self._size(self.size if size is None else size)
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors: expected 'pt' or 'np', got {return_tensors!r}")
        backend = backend or self.backend
        imgs = self._load_all(images, backend, device or self.device)
        if backend == "pil":
            lut_t = self._lut().T.copy()
            out = []
            for i, a in enumerate(imgs):
                if self.do_resize:
                    a = self._resize_pil(a, (H, W))
                elif a.shape[:2] != (H, W) and len(imgs) > 1:
                    raise ValueError(f"images[{i}]: with do_resize=False all images must have one size")
                out.append(lut_t[a, np.arange(3)].transpose(2, 0, 1))
            values = torch.from_numpy(np.stack(out))
        else:
            lut = self._lut_tensor(imgs[0].device)
            chan = torch.arange(3, device=lut.device)[:, None, None]
            values = torch.stack(
                [lut[chan, (resize_uint8(t, (H, W), int(self.resample)) if self.do_resize else t).long()] for t in imgs]
            )
        if return_tensors == "np":
            return BatchFeature(pixel_values=values.cpu().numpy())
        return BatchFeature(pixel_values=values)


def image_processor_from_pretrained(
    name_or_path: str | os.PathLike, **kwargs: Any
) -> Siglip2ImageProcessor | SiglipImageProcessor:
    """The processor class named in `preprocessor_config.json` (Siglip2* -> NaFlex, Siglip* -> FixRes)."""
    hub = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "local_files_only") if k in kwargs}
    directory = resolve_dir(name_or_path, **hub)
    d = read_preprocessor_config(directory)
    kind = str(d.get("image_processor_type", ""))
    cls = Siglip2ImageProcessor if ("Siglip2" in kind or "max_num_patches" in d) else SiglipImageProcessor
    if cls is Siglip2ImageProcessor:
        d = _with_model_patch_size(directory, d, kwargs)
    d.update(kwargs)
    return cls(**d)

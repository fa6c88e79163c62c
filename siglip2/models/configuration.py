"""Dataclass configs with every field and default of transformers' SigLIP2 / SigLIP configs.

`Siglip2*Config` (model_type "siglip2", NaFlex) and `Siglip*Config` (model_type "siglip", the FixRes checkpoints).
Configs are data: `from_dict`/`to_dict` convert to and from a config.json dict (unknown keys kept) and validate
every field; `from_pretrained`/`save_pretrained` hand the dict to siglip2.checkpoints, which reads and writes the
file. A transformers config object is accepted wherever a config is. `BaseConfig` holds the fields every config has.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeAlias, TypeVar

from ..checkpoints.loading import CONFIG_NAME, config_model_type, read_config_json, resolve_dir
from ..checkpoints.saving import save_config_json

if TYPE_CHECKING:
    from typing_extensions import Self, dataclass_transform
else:
    # Only type checkers read this marker (it tells them `_config` makes dataclasses); at run time it is a no-op, so
    # the package does not need typing_extensions on Python 3.10 (typing.dataclass_transform arrived in 3.11).
    def dataclass_transform(**_kwargs):
        return lambda f: f


class _HasToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


# What models and `config_from_any` accept: a config object (ours or transformers') or a config.json dict.
ConfigLike: TypeAlias = "dict[str, Any] | _HasToDict"
_C = TypeVar("_C", bound=type)
_T = TypeVar("_T", bound="BaseConfig")


@dataclass_transform(field_specifiers=(field,))
def _config(cls: _C) -> _C:
    """@dataclass, plus a `num_labels=` constructor keyword (as transformers' configs take) that sets id2label."""
    cls = dataclass(cls)
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, num_labels=None, **kwargs):
        init(self, *args, **kwargs)
        if num_labels is not None:
            self.num_labels = num_labels

    cls.__init__ = __init__
    return cls


def _int(cfg: Any, name: str, lo: int = 1, optional: bool = False) -> None:
    """Field `name` must be an int >= lo (never a bool, a float or a string): a named TypeError/ValueError."""
    v = getattr(cfg, name)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{type(cfg).__name__}.{name} must be an int, got {type(v).__name__} {v!r}")
    if int(v) < lo:
        raise ValueError(f"{type(cfg).__name__}.{name} must be >= {lo}, got {v}")


def _real(cfg: Any, name: str, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{type(cfg).__name__}.{name} must be a number, got {type(v).__name__} {v!r}")
    x = float(v)  # numbers.Real declares no comparison operators; float() is exact for the values configs hold
    if not (lo < x if lo_open else lo <= x) or not x <= hi or not math.isfinite(x):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{']' if math.isfinite(hi) else ')'}"
        raise ValueError(f"{type(cfg).__name__}.{name} must lie in {interval}, got {v}")


def _typed(cfg: Any, name: str, types: tuple, what: str) -> None:
    v = getattr(cfg, name)
    if not isinstance(v, types):
        raise TypeError(f"{type(cfg).__name__}.{name} must be {what}, got {type(v).__name__} {v!r}")


def dtype_name(value: Any) -> Any:
    """A torch dtype as transformers writes it in config.json ("float32"); anything else unchanged."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return value


# PreTrainedConfig fields the forward pass reads; everything else is kept verbatim in `extra`.
_COMMON = ("output_attentions", "output_hidden_states", "return_dict", "problem_type", "id2label", "dtype")


@_config
class BaseConfig:
    """The fields every config has (transformers' PreTrainedConfig fields that the forward pass reads)."""

    model_type: ClassVar[str] = ""
    sub_configs: ClassVar[dict] = {}
    output_attentions: bool = False
    output_hidden_states: bool = False
    return_dict: bool = True
    problem_type: str | None = None
    id2label: dict = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    dtype: str | None = None
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for name in ("output_attentions", "output_hidden_states", "return_dict"):
            _typed(self, name, (bool,), "True or False")
        _typed(self, "id2label", (dict,), "a dict of class index -> label")
        try:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{type(self).__name__}.id2label keys must be class indices (ints), got {list(self.id2label)[:5]}"
            ) from e
        self.dtype = dtype_name(self.dtype)
        _typed(self, "dtype", (str, type(None)), "None or a dtype name such as 'float32'")

    def validate(self) -> None:
        """Check every field again (after fields were set by hand): a TypeError/ValueError naming the field."""
        self.__post_init__()

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int):
        self.id2label = {i: self.id2label.get(i, f"LABEL_{i}") for i in range(n)}

    @property
    def label2id(self) -> dict:
        return {v: k for k, v in self.id2label.items()}

    @classmethod
    def from_dict(cls, d: dict | Any) -> Self:
        """Build from a config.json dict (or a transformers config object). Unknown keys go to `extra`."""
        if not isinstance(d, dict):
            if not hasattr(d, "to_dict"):
                raise TypeError(f"{cls.__name__}.from_dict: expected a dict or a config object, got {type(d).__name__}")
            d = d.to_dict()
        d = dict(d)
        if "torch_dtype" in d and "dtype" not in d:
            d["dtype"] = d.pop("torch_dtype")
        mt = d.pop("model_type", cls.model_type)
        if mt and mt != cls.model_type:
            raise ValueError(f"{cls.__name__}: config.json has model_type {mt!r}, expected {cls.model_type!r}")
        if "num_labels" in d and "id2label" not in d:
            d["id2label"] = {i: f"LABEL_{i}" for i in range(int(d["num_labels"]))}
        d.pop("num_labels", None)
        d.pop("label2id", None)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: d.pop(k) for k in list(d) if k in names}
        for key, sub_cls in cls.sub_configs.items():
            sub = kwargs.get(key)
            kwargs[key] = sub_cls() if sub is None else sub if isinstance(sub, sub_cls) else sub_cls.from_dict(sub)
        return cls(**kwargs, extra=d)

    def to_dict(self) -> dict:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, BaseConfig) else v
        out["dtype"] = dtype_name(out.get("dtype"))  # set by hand to a torch dtype: written as transformers does
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = self.label2id
        out["model_type"] = self.model_type
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write config.json into a directory (atomically; an interrupted model save there is completed first)."""
        save_config_json(save_directory, self.to_json_string())  # serialized before the directory is touched

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **hub_kwargs: Any) -> Self:
        """Read `config.json` from a directory or hub id. A sub-config class reads its part of a full config."""
        directory = resolve_dir(name_or_path, **hub_kwargs)
        path = os.path.join(directory, CONFIG_NAME)
        d = read_config_json(directory)
        config_model_type(d, path)  # a `{}` or hand-trimmed file is refused, not read as the default model
        key = getattr(cls, "base_config_key", None)
        if key and d.get("model_type") != cls.model_type and key in d:
            d = d[key]
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{path}: {e}") from e


@_config
class _TowerConfig(BaseConfig):
    """Fields every encoder tower has."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        for name in ("hidden_size", "intermediate_size", "num_attention_heads"):
            _int(self, name)
        _int(self, "num_hidden_layers", 0)
        _typed(self, "hidden_act", (str,), "an activation name such as 'gelu_pytorch_tanh'")
        _real(self, "layer_norm_eps", 0.0, lo_open=True)
        _real(self, "attention_dropout", 0.0, 1.0)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{type(self).__name__}: hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )


@_config
class Siglip2TextConfig(_TowerConfig):
    model_type: ClassVar[str] = "siglip2_text_model"
    base_config_key: ClassVar[str] = "text_config"
    vocab_size: int = 32000
    max_position_embeddings: int = 64
    pad_token_id: int | None = 1  # CLIP leftovers: not used by the forward pass
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407
    projection_size: int | None = None  # None -> hidden_size (g-opt uses 1536)

    def __post_init__(self):
        super().__post_init__()
        if self.projection_size is None:
            self.projection_size = self.hidden_size
        for name in ("vocab_size", "max_position_embeddings", "projection_size"):
            _int(self, name)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            _int(self, name, lo=-(2**63), optional=True)


@_config
class _VisionConfig(_TowerConfig):
    """Fields shared by the NaFlex and FixRes vision configs."""

    base_config_key: ClassVar[str] = "vision_config"
    num_channels: int = 3
    patch_size: int = 16
    vision_use_head: bool = True

    def __post_init__(self):
        super().__post_init__()
        _int(self, "num_channels")
        _int(self, "patch_size")
        _typed(self, "vision_use_head", (bool,), "True or False")


@_config
class Siglip2VisionConfig(_VisionConfig):
    model_type: ClassVar[str] = "siglip2_vision_model"
    num_patches: int = 256  # size of the learned position table; must be a perfect square

    def __post_init__(self):
        super().__post_init__()
        _int(self, "num_patches")
        if math.isqrt(self.num_patches) ** 2 != self.num_patches:
            raise ValueError(f"Siglip2VisionConfig: num_patches must be a perfect square, got {self.num_patches}")


@_config
class Siglip2Config(BaseConfig):
    model_type: ClassVar[str] = "siglip2"
    sub_configs: ClassVar[dict] = {"text_config": Siglip2TextConfig, "vision_config": Siglip2VisionConfig}
    text_config: Any = None
    vision_config: Any = None
    initializer_factor: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        for key, sub_cls in self.sub_configs.items():
            sub = getattr(self, key)
            if not isinstance(sub, sub_cls):
                setattr(self, key, sub_cls() if sub is None else sub_cls.from_dict(sub))
            else:
                sub.validate()
        _real(self, "initializer_factor", 0.0)


@_config
class SiglipTextConfig(Siglip2TextConfig):
    model_type: ClassVar[str] = "siglip_text_model"


@_config
class SiglipVisionConfig(_VisionConfig):
    model_type: ClassVar[str] = "siglip_vision_model"
    image_size: int = 224

    def __post_init__(self):
        super().__post_init__()
        _int(self, "image_size")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"SiglipVisionConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@_config
class SiglipConfig(Siglip2Config):
    model_type: ClassVar[str] = "siglip"
    sub_configs: ClassVar[dict] = {"text_config": SiglipTextConfig, "vision_config": SiglipVisionConfig}


CONFIG_CLASSES = {
    c.model_type: c
    for c in (Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig, SiglipConfig, SiglipTextConfig, SiglipVisionConfig)
}


def config_from_any(cfg: ConfigLike, cls: type[_T]) -> _T:
    """Accept our config, a transformers config, or a dict, and return an instance of `cls`."""
    if isinstance(cfg, cls):
        return cfg
    if isinstance(cfg, BaseConfig):
        # a full config handed to a tower class: take the tower's part
        key = getattr(cls, "base_config_key", None)
        if key and hasattr(cfg, key):
            return config_from_any(getattr(cfg, key), cls)
        return cls.from_dict(cfg.to_dict())
    d = cfg if isinstance(cfg, dict) else cfg.to_dict()
    key = getattr(cls, "base_config_key", None)
    if key and key in d and d.get("model_type") != cls.model_type:
        d = d[key]
    return cls.from_dict(d)

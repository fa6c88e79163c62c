"""Model outputs with transformers' field names and order, readable by attribute, key or index.

As in transformers' ModelOutput, integer indexing and `to_tuple()` skip the fields that are None, and
`Siglip2Output.to_tuple()` turns the nested tower outputs into tuples too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class _Output:
    # a (field-less) dataclass itself, so dataclasses.fields(self) is typed; the subclasses add the fields
    def to_tuple(self) -> tuple:
        vals = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            vals.append(v.to_tuple() if isinstance(v, _Output) else v)
        return tuple(vals)

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return tuple(getattr(self, k) for k in self.keys())[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class BaseModelOutputWithPooling(_Output):
    last_hidden_state: Any = None
    pooler_output: Any = None
    hidden_states: Any = None
    attentions: Any = None


@dataclass
class ImageClassifierOutput(_Output):
    loss: Any = None
    logits: Any = None
    hidden_states: Any = None
    attentions: Any = None


@dataclass
class Siglip2Output(_Output):
    loss: Any = None
    logits_per_image: Any = None
    logits_per_text: Any = None
    text_embeds: Any = None
    image_embeds: Any = None
    text_model_output: Any = None
    vision_model_output: Any = None


SiglipOutput = Siglip2Output

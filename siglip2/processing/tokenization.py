"""Gemma tokenizer for SigLIP2 (`Siglip2Tokenizer`); the image + text processors are in processor.py.

The tokenizer is rebuilt from a checkpoint's tokenizer.json the way transformers 5 does it: the BPE vocabulary
and merges (byte fallback, fused unknowns), normalizer Replace(" ", "▁"), pre-tokenizer Split(" "), and the
post-processor from tokenizer_config's add_bos/eos_token flags or else from tokenizer.json. NaFlex checkpoints
(model_type "siglip2") lowercase the text first because the model was trained on lowercased text; FixRes ones
(model_type "siglip") do not. Padding side and model_input_names come from tokenizer_config.json; the
published checkpoints pad right and return no attention_mask, so pads are attended, as in training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..checkpoints.loading import CheckpointError, atomic_write_text, checkpoint_file, read_json_object, resolve_dir
from .image_processing import BatchFeature
from .image_utils import positive_int

if TYPE_CHECKING:
    import tokenizers

SPECIAL_KEYS = ("pad_token", "eos_token", "bos_token", "unk_token", "mask_token")
DEFAULT_SPECIALS = {
    "pad_token": "<pad>",
    "eos_token": "<eos>",
    "bos_token": "<bos>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}


def _read_json(path: str, required: bool = False, read_from: str | None = None) -> dict:
    """A JSON object from `path` (read from `read_from` when given); {} when absent and not required."""
    return read_json_object(path, required=required, read_from=read_from) or {}


def _token_str(v: Any) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def checkpoint_model_type(directory: str) -> str | None:
    """model_type from config.json in `directory`, or None when there is no config.json."""
    path = os.path.join(directory, "config.json")
    return _read_json(path, read_from=checkpoint_file(directory, "config.json")).get("model_type")


class Siglip2Tokenizer:
    """Wraps a `tokenizers.Tokenizer`; `__call__` follows transformers' padding/truncation arguments."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        lowercase: bool,
        padding_side: str = "right",
        model_input_names: Sequence[str] = ("input_ids",),
        specials: dict | None = None,
        model_max_length: int | None = None,
        config: dict | None = None,
    ) -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        self.backend, self.lowercase, self.padding_side = backend, lowercase, padding_side
        self.model_input_names = list(model_input_names)
        self.specials = dict(DEFAULT_SPECIALS, **(specials or {}))
        self.model_max_length = model_max_length
        self.config = dict(config or {})
        self.pad_token_id = self.backend.token_to_id(self.specials["pad_token"])
        self.eos_token_id = self.backend.token_to_id(self.specials["eos_token"])

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        model_type: str | None = None,
        lowercase: bool | None = None,
        **hub_kwargs: Any,
    ) -> Siglip2Tokenizer:
        """Read tokenizer.json (+ tokenizer_config.json, special_tokens_map.json, config.json) from a
        directory or hub id. `lowercase` defaults to True for model_type "siglip2" (read from config.json).
        A malformed file raises a CheckpointError that names it."""
        d = resolve_dir(name_or_path, **hub_kwargs)
        data = _read_json(os.path.join(d, "tokenizer.json"), required=True)
        cfg = _read_json(os.path.join(d, "tokenizer_config.json"))
        smap = _read_json(os.path.join(d, "special_tokens_map.json"))
        try:
            return cls._build(d, data, cfg, smap, model_type, lowercase)
        except CheckpointError:
            raise
        except Exception as e:  # KeyError/TypeError/AttributeError on a malformed entry, tokenizers' own errors
            raise CheckpointError(
                f"{d}/tokenizer.json (with tokenizer_config.json, special_tokens_map.json): "
                f"malformed ({type(e).__name__}: {e})"
            ) from e

    @classmethod
    def _build(
        cls, d: str, data: dict, cfg: dict, smap: dict, model_type: str | None, lowercase: bool | None
    ) -> Siglip2Tokenizer:
        """tokenizer.json's BPE model, transformers 5's normalizer / pre-tokenizer / decoder, the added tokens, the
        post-processor; `d` names the directory in errors."""
        specials = {k: _token_str(cfg.get(k, smap.get(k, DEFAULT_SPECIALS[k]))) for k in SPECIAL_KEYS}
        if lowercase is None:
            model_type = model_type or checkpoint_model_type(d)
            lowercase = model_type == "siglip2" if model_type else cfg.get("tokenizer_class") == "Siglip2Tokenizer"
        tok = _bpe_tokenizer(d, data.get("model", {}), specials["unk_token"])
        _set_pipeline(tok, lowercase)
        _add_tokens(tok, cfg, data, specials)
        tok.post_processor = _post_processor(d, tok, data, cfg, specials)
        mml = cfg.get("model_max_length")
        return cls(
            tok,
            lowercase=lowercase,
            padding_side=cfg.get("padding_side", "left"),
            model_input_names=cfg.get("model_input_names", ["input_ids", "attention_mask"]),
            specials=specials,
            model_max_length=mml if isinstance(mml, int) and mml < 10**6 else None,
            config=cfg,
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (each atomically)."""
        os.makedirs(save_directory, exist_ok=True)
        cfg = dict(
            self.config,
            padding_side=self.padding_side,
            model_input_names=self.model_input_names,
            **self.specials,
        )
        cfg.setdefault("tokenizer_class", "Siglip2Tokenizer" if self.lowercase else "GemmaTokenizer")
        atomic_write_text(os.path.join(save_directory, "tokenizer.json"), self.backend.to_str())
        atomic_write_text(os.path.join(save_directory, "tokenizer_config.json"), json.dumps(cfg, indent=2) + "\n")
        atomic_write_text(
            os.path.join(save_directory, "special_tokens_map.json"),
            json.dumps(self.specials, indent=2) + "\n",
        )

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(
        self,
        text: str | Sequence[str],
        *,
        padding: bool | str | None = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        return_attention_mask: bool | None = None,
        add_special_tokens: bool = True,
    ) -> BatchFeature:
        """text: a string or a list of strings. padding: False/"do_not_pad", True/"longest", "max_length"."""
        single = isinstance(text, str)
        texts = [text] if single else list(text) if isinstance(text, (list, tuple)) else None
        if texts is None or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"text: expected a string or a list of strings, got {type(text).__name__}")
        padding, max_length = self._check_call(padding, truncation, max_length, return_tensors)
        self._configure_backend(padding, truncation, max_length)
        enc = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        ids = [e.ids for e in enc]
        want_mask = (
            ("attention_mask" in self.model_input_names) if return_attention_mask is None else return_attention_mask
        )
        out = {"input_ids": ids}
        if want_mask:
            out["attention_mask"] = [e.attention_mask for e in enc]
        return BatchFeature(_as_tensors(out, return_tensors, single, padding, max_length))

    def _check_call(
        self, padding: bool | str | None, truncation: bool | str | None, max_length: int | None, return_tensors: Any
    ) -> tuple[str, int | None]:
        """The padding strategy's name and the max_length to use (the config's model_max_length when needed)."""
        padding = {True: "longest", False: "do_not_pad", None: "do_not_pad"}.get(padding, padding)
        if padding not in ("longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding: expected True/False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors: expected 'pt', 'np' or None, got {return_tensors!r}")
        if max_length is not None:
            max_length = positive_int("max_length", max_length)
        if max_length is None and (padding == "max_length" or truncation):
            max_length = self.model_max_length
            if max_length is None:
                raise ValueError(
                    "max_length: needed with padding='max_length' or truncation=True "
                    "(the tokenizer config sets no model_max_length); SigLIP2 uses 64"
                )
        return str(padding), max_length

    def _configure_backend(self, padding: str, truncation: bool | str | None, max_length: int | None) -> None:
        """Truncation and padding of the `tokenizers` backend for this call."""
        be = self.backend
        if truncation and truncation not in ("do_not_truncate",):
            if max_length is None:  # set above from model_max_length (or raised there) whenever truncation is on
                raise ValueError("max_length: needed with truncation=True")
            be.enable_truncation(max_length=max_length, strategy="longest_first", direction="right")
        else:
            be.no_truncation()
        if padding == "do_not_pad":
            be.no_padding()
        else:
            be.enable_padding(
                direction=self.padding_side,
                pad_id=self.pad_token_id,
                pad_token=self.specials["pad_token"],
                length=max_length if padding == "max_length" else None,
            )

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, batch: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = True
    ) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]


# ----------------------------------------------------------------------------------------------
# Building the backend from tokenizer.json (Siglip2Tokenizer._build's steps)
# ----------------------------------------------------------------------------------------------


def _bpe_tokenizer(d: str, model: Any, unk_token: str | None) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` with tokenizer.json's BPE vocabulary and merges (byte fallback, fused unknowns)."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    if not isinstance(model, dict) or model.get("type") != "BPE":
        got = model.get("type") if isinstance(model, dict) else model
        raise CheckpointError(f"{d}/tokenizer.json: expected a BPE (Gemma) model, got {got!r}")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise CheckpointError(
            f"{d}/tokenizer.json: the BPE model has no vocab (expected a non-empty "
            f"'vocab' object of token -> id, got {type(vocab).__name__})"
        )
    merges: list[tuple[str, str]] = []
    for m in model.get("merges", []):
        pair = m.split(" ") if isinstance(m, str) else list(m)
        if len(pair) != 2:
            raise CheckpointError(f"{d}/tokenizer.json: a BPE merge must be two tokens, got {m!r}")
        merges.append((pair[0], pair[1]))
    return Tokenizer(
        BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token=unk_token, dropout=None, byte_fallback=True)
    )


def _set_pipeline(tok: tokenizers.Tokenizer, lowercase: bool) -> None:
    """transformers 5's Gemma pipeline: normalizer (lowercase for NaFlex) + Replace(" ", "▁"), Split(" "), decoder."""
    from tokenizers import decoders, normalizers, pre_tokenizers

    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    replace = normalizers.Replace(" ", "▁")
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), replace]) if lowercase else replace


def _add_tokens(tok: tokenizers.Tokenizer, cfg: dict, data: dict, specials: dict) -> None:
    """Added tokens: tokenizer_config's table (as transformers), then tokenizer.json's, then the specials."""
    from tokenizers import AddedToken

    added, seen = [], set()
    entries = sorted(((int(i), t) for i, t in cfg.get("added_tokens_decoder", {}).items()), key=lambda x: x[0])
    entries += [(t.get("id"), t) for t in data.get("added_tokens", [])]
    for _, t in entries:
        if t["content"] in seen:
            continue
        seen.add(t["content"])
        added.append(
            AddedToken(
                t["content"],
                single_word=t.get("single_word", False),
                lstrip=t.get("lstrip", False),
                rstrip=t.get("rstrip", False),
                normalized=t.get("normalized", False),
                special=t.get("special", True),
            )
        )
    added += [AddedToken(s, special=True, normalized=False) for s in specials.values() if s and s not in seen]
    tok.add_special_tokens([t for t in added if t.special])
    tok.add_tokens([t for t in added if not t.special])


def _post_processor(d: str, tok: tokenizers.Tokenizer, data: dict, cfg: dict, specials: dict) -> Any:
    """From tokenizer_config's add_bos/eos_token flags (as transformers 5), else tokenizer.json's own."""
    from tokenizers import Tokenizer, processors

    if "add_bos_token" in cfg or "add_eos_token" in cfg or not data.get("post_processor"):
        bos, eos = specials["bos_token"], specials["eos_token"]
        add_bos, add_eos = bool(cfg.get("add_bos_token", False)), bool(cfg.get("add_eos_token", False))
        if (add_bos and bos is None) or (add_eos and eos is None):
            raise CheckpointError(
                f"{d}/tokenizer_config.json: add_bos_token={add_bos}, add_eos_token={add_eos} "
                f"need the token, got bos_token={bos!r}, eos_token={eos!r}"
            )
        first = [bos] if add_bos and bos is not None else []
        last = [eos] if add_eos and eos is not None else []
        single = " ".join([f"{t}:0" for t in first] + ["$A:0"] + [f"{t}:0" for t in last])
        pair = " ".join([single] + [f"{t}:1" for t in first] + ["$B:1"] + [f"{t}:1" for t in last])
        sp = [(t, tok.token_to_id(t)) for t in first + last]
        return processors.TemplateProcessing(single=single, pair=pair, special_tokens=sp)
    model = data.get("model", {})
    return Tokenizer.from_str(
        json.dumps({**data, "model": {**model, "vocab": {}, "merges": []}, "added_tokens": []})
    ).post_processor


def _as_tensors(out: dict, return_tensors: str | None, single: bool, padding: str, max_length: int | None) -> dict:
    """Lists of ids (and masks) as int64 tensors ("pt"), arrays ("np"), or lists (one text: its own list)."""
    ids = out["input_ids"]
    if return_tensors is not None and not ids:  # no texts: (0, max_length) with max_length padding, else (0, 0)
        width = max_length if padding == "max_length" and max_length is not None else 0  # not None: checked above
        out = {k: torch.zeros(0, width, dtype=torch.int64) for k in out}
        if return_tensors == "np":
            out = {k: v.numpy() for k, v in out.items()}
    elif return_tensors is not None:
        if len({len(x) for x in ids}) > 1:
            raise ValueError(
                "text: sequences have different lengths; pass padding=True or 'max_length' to return tensors"
            )
        out = {
            k: (torch.tensor(v, dtype=torch.int64) if return_tensors == "pt" else np.asarray(v, dtype=np.int64))
            for k, v in out.items()
        }
    elif single:
        out = {k: v[0] for k, v in out.items()}
    return out

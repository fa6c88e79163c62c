"""Command line: `python -m siglip2` (or the `siglip2` console script).

  siglip2 classify IMAGE... --labels cat,dog [--model ID_OR_DIR] [--max-num-patches N] [--json]
  siglip2 embed IMAGE_OR_TEXT... --out embeddings.safetensors [--model ID_OR_DIR]

An argument to `embed` that names an existing file is an image, an existing directory stands for the image files
in it (sorted, not recursive; a directory without any is refused); anything else is a text. Errors print one line
on stderr and exit with status 1 (bad input) or 2 (no usable checkpoint). `--max-num-patches` is at most 4096.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .checkpoints.loading import CheckpointError, remove_stale_temps
from .pipeline import DEFAULT_MODEL, DEFAULT_TEMPLATE, MAX_NUM_PATCHES

if TYPE_CHECKING:
    from .models.modeling import Siglip2Model
    from .processing.processor import Siglip2Processor

# Subcommands that live in their own module: name -> (module, help). Each module defines
# `add_arguments(parser)` and `run(args) -> int`, and keeps its heavy imports inside `run`.
COMMANDS: dict[str, tuple[str, str]] = {
    "export-kernel": (
        "siglip2.integrations.kernel_hub",
        "write our attention as a Hugging Face kernel-hub build (transformers attn_implementation, offline)",
    ),
    "embed-dataset": (
        "siglip2.embed_dataset.cli",
        "embed an image collection (folder, list, table, webdataset) into shards",
    ),
    "profile": ("siglip2.profile.cli", "what each NaFlex max_num_patches does to your images: shapes, padding, speed"),
    "train": ("siglip2.train.cli", "contrastive training / fine-tuning (DDP or FSDP2 under torchrun)"),
}

HINT = (
    "point --model at a local checkpoint directory (config.json, model.safetensors, tokenizer.json, "
    "preprocessor_config.json), e.g. --model ./siglip2-base-patch16-naflex"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="siglip2", description="SigLIP2 zero-shot classification and embeddings")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"checkpoint directory or hub id (default {DEFAULT_MODEL})"
    )
    common.add_argument(
        "--max-num-patches",
        type=int,
        default=None,
        help=f"NaFlex patch budget per image, 1..{MAX_NUM_PATCHES} (default: the checkpoint's preprocessor_config)",
    )
    common.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    common.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    c = sub.add_parser("classify", parents=[common], help="zero-shot classify images")
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--labels", required=True, help="comma-separated candidate labels")
    c.add_argument("--template", default=DEFAULT_TEMPLATE, help=f"text template (default {DEFAULT_TEMPLATE!r})")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e = sub.add_parser("embed", parents=[common], help="write image/text embeddings to a safetensors file")
    e.add_argument("inputs", nargs="+", metavar="IMAGE_OR_TEXT")
    e.add_argument("--out", required=True, help="output .safetensors file")
    e.add_argument("--raw", action="store_true", help="store pooled embeddings without L2 normalization")
    for name, (module, help_text) in COMMANDS.items():
        q = sub.add_parser(name, help=help_text)
        importlib.import_module(module).add_arguments(q)
    return p


def _device(name: str | None) -> str:
    """--device checked before any loading (pipeline.resolve_device, shared with train and embed-dataset)."""
    from .pipeline import resolve_device

    return str(resolve_device(name))


def _check_common(args: argparse.Namespace) -> str:
    from .pipeline import check_max_num_patches

    check_max_num_patches(args.max_num_patches, "--max-num-patches")
    return _device(args.device)


def _load(args: argparse.Namespace) -> tuple[Siglip2Model, Siglip2Processor]:
    import torch

    from .pipeline import load_model
    from .processing.processor import Siglip2Processor

    device = _check_common(args)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, directory = load_model(args.model, device=device, dtype=dtype)
    return model, Siglip2Processor.from_pretrained(directory)


def _classify(args: argparse.Namespace) -> int:
    from .pipeline import check_template, zero_shot_classify

    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if not labels:
        raise ValueError("--labels: give at least one label, e.g. --labels cat,dog")
    check_template(args.template, "--template")
    _check_common(args)  # before the (slow) model load
    model, processor = _load(args)
    results = zero_shot_classify(
        list(args.images),
        labels,
        model=model,
        template=args.template,
        processor=processor,
        max_num_patches=args.max_num_patches,
    )
    if args.json:
        print(json.dumps([{"image": img, "scores": r} for img, r in zip(args.images, results)], indent=2))
        return 0
    width = max(len(label) for label in labels)
    for img, r in zip(args.images, results):
        print(img)
        for item in r:
            print(f"  {item['label']:<{width}}  {item['score']:.4f}")
    return 0


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}


def _embed(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from .pipeline import embed

    images: list[str] = []
    texts: list[str] = []
    _check_common(args)
    check_output_file(args.out, "--out")  # before the model runs, not after
    for x in args.inputs:
        if os.path.isfile(x):
            images.append(x)
        elif os.path.isdir(x):
            found = sorted(
                os.path.join(x, f)
                for f in os.listdir(x)
                if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(x, f))
            )
            if not found:
                raise ValueError(
                    f"{x!r} is a directory with no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                    f"pass image files, a directory of images, or texts"
                )
            images.extend(found)
        elif os.path.splitext(x)[1].lower() in IMAGE_EXTENSIONS or os.sep in x:
            # looks like a path, not a sentence: a typo must not be embedded as text
            raise FileNotFoundError(
                f"{x!r} looks like an image path but no such file exists "
                f"(to embed it as text, drop the extension or the path separator)"
            )
        else:
            texts.append(x)
    model, processor = _load(args)
    out = embed(
        images,
        texts,
        model=model,
        processor=processor,
        max_num_patches=args.max_num_patches,
        normalize=not args.raw,
    )
    meta = {
        "images": json.dumps(images),
        "texts": json.dumps(texts),
        "model": str(args.model),
        "normalized": str(not args.raw).lower(),
    }
    path = check_output_file(args.out, "--out")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    remove_stale_temps(path)  # a killed run's temp file: its process is gone
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(out, tmp, metadata=meta)
        check_output_file(path, "--out")  # again: the embedding took a while
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items())
    print(f"wrote {path}: {shapes}")
    return 0


def check_output_file(path: str, name: str) -> str:
    """`path` made absolute, when it is a new path or a regular file: the output is renamed over it, which would
    replace a device, a FIFO, a socket or a directory's entry without a word."""
    import stat

    path = os.path.abspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else _file_kind(mode)
        raise ValueError(f"{name}: {path!r} is {kind}, not a regular file; give a file path")
    return path


def _file_kind(mode: int) -> str:
    import stat

    for test, kind in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in COMMANDS:
            return importlib.import_module(COMMANDS[args.command][0]).run(args)
        return _classify(args) if args.command == "classify" else _embed(args)
    except CheckpointError as e:
        print(
            f"siglip2: cannot load model {getattr(args, 'model', None)!r}: {_one_line(e)}. To run offline, {HINT}",
            file=sys.stderr,
        )
        return 2
    except (OSError, ValueError, TypeError, _bomb_error()) as e:
        print(f"siglip2: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _bomb_error() -> type[Exception]:
    import PIL.Image

    return PIL.Image.DecompressionBombError


if __name__ == "__main__":
    sys.exit(main())

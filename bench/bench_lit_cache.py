"""Locked-image tuning with and without the image-embedding cache (`siglip2 train --lock-image
[--cache-image-embeddings]`): images/s per epoch, read from each run's log.jsonl.

    python bench/bench_lit_cache.py [--model tiny] [--images 256] [--epochs 3] [--batch-size 32] [--seq-len 64]

The data are the drawn-shape images of the tests (tests/shapes.py) with their captions, and a tiny tokenizer; the
model is a random init of `--model` (a size of `siglip2 train`). Each epoch is one log record. On a GPU, pass
`--kernel-impl triton`; the CPU figures in docs/benchmarks.md use the reference kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def main(argv=None) -> int:
    from shapes import make_dataset
    from test_tokenization import make_tokenizer_dir

    from siglip2.train import TrainConfig, train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--kernel-impl", default="reference", choices=["auto", "triton", "reference"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rep", type=int, default=3, help="runs of each configuration (median, min, max per epoch)")
    a = ap.parse_args(argv)
    if a.rep < 1:
        raise ValueError(f"--rep: expected an integer >= 1, got {a.rep}")
    if a.images % a.batch_size:
        raise ValueError(f"--images: must be a multiple of --batch-size ({a.batch_size}), got {a.images}")
    torch.set_num_threads(a.threads)
    steps_per_epoch = a.images // a.batch_size
    with tempfile.TemporaryDirectory() as root:
        make_tokenizer_dir(os.path.join(root, "tok"), model_type=None)
        data = make_dataset(root, a.images, seed=0, name="train")
        print(f"{a.model}, {a.images} images, batch {a.batch_size}, max_num_patches {a.seq_len}")
        print(f"torch {torch.__version__}, {a.threads} threads, kernels {a.kernel_impl}")
        print("run                          " + "  ".join(f"epoch {e + 1:>2} img/s" for e in range(a.epochs)))
        per_run: dict[str, list[list[float]]] = {}
        # the configurations alternate, run after run, so a shared machine's load hits both alike
        for rep, cache in ((r, c) for r in range(a.rep) for c in (False, True)):
            out = os.path.join(root, f"run-{cache}-{rep}")
            cfg = TrainConfig(
                data=data,
                model=a.model,
                tokenizer=os.path.join(root, "tok"),
                out=out,
                kernel_impl=a.kernel_impl,
                workers=0,
                progress=False,
                log_every=steps_per_epoch,
                seq_lens=(a.seq_len,),
                batch_size=a.batch_size,
                steps=a.epochs * steps_per_epoch,
                lock_image=True,
                cache_image_embeddings=cache,
            )
            train(cfg)
            with open(os.path.join(out, "log.jsonl")) as f:
                log = [json.loads(line) for line in f]
            name = "--lock-image" + (" --cache-image-embeddings" if cache else "")
            print(f"{name:<28} " + "  ".join(f"{r['images_per_s']:>14.1f}" for r in log))
            per_run.setdefault(name, []).append([r["images_per_s"] for r in log])
    for name, runs in per_run.items():  # one JSON row per configuration and epoch: median, min, max over runs
        for e in range(a.epochs):
            xs = sorted(r[e] for r in runs)
            row = {"run": name, "epoch": e + 1, "images_per_s": statistics.median(xs), "min": xs[0], "max": xs[-1]}
            print(json.dumps({**row, "n": len(xs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

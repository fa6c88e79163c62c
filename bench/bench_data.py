"""Benchmark: the embed-dataset data pipeline (siglip2.data) on the CPU, and end to end.

  python bench/bench_data.py decode    # 12 MP JPEGs at max_num_patches 256, one core: exact / --fast-decode /
                                       # transformers (load_image + Siglip2ImageProcessorPil); images/s per core
  python bench/bench_data.py fidelity  # --fast-decode vs exact on the same photos: pixel difference and the
                                       # embedding cosine (random base-size weights unless --model DIR)
  python bench/bench_data.py e2e       # small model, 2 MP JPEGs: decode / preprocess / H2D / model times, and the
                                       # pipeline's wall time with 0 and 1 DataLoader workers (overlap)
  python bench/bench_data.py gpu       # on CUDA: `siglip2 embed-dataset` images/s, So400m shape, 256 patches, bf16

Photos: scikit-image's color photos, upscaled to 4000x3000 (bicubic) with mild sensor noise (sigma 3) so the
JPEGs carry fine detail, saved at quality 90 (12 MP). Timings are medians over files and repeats, the providers
interleaved (one core: torch threads 1).
Random weights are a stand-in where no real checkpoint is reachable; a real one is passed with --model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "retina",
    "hubble_deep_field",
    "stereo_motorcycle",
)


def make_photos(directory: str, size=(4000, 3000), names=PHOTOS, quality=90) -> list[str]:
    """12 MP JPEGs from scikit-image's photos (cached in `directory`)."""
    import PIL.Image

    try:
        import skimage.data as skimage
    except ImportError:  # e.g. the GPU machine: photo-like synthetic images instead
        skimage = None
    os.makedirs(directory, exist_ok=True)
    paths, rng = [], np.random.default_rng(0)
    for name in names:
        p = os.path.join(directory, f"{name}-{size[0]}x{size[1]}.jpg")
        if not os.path.exists(p):
            a = getattr(skimage, name)() if skimage else synthetic_photo(rng)
            a = a[0] if isinstance(a, tuple) else a  # stereo_motorcycle: (left, right, disparity)
            a = a if a.ndim == 3 else np.repeat(a[..., None], 3, -1)
            img = PIL.Image.fromarray(a[..., :3]).resize(size, PIL.Image.BICUBIC)
            noisy = np.asarray(img, np.float32) + rng.normal(0, 3, (size[1], size[0], 3))
            PIL.Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(p, quality=quality)
        paths.append(p)
    return paths


def synthetic_photo(rng, h=480, w=640):
    """Smooth color gradients, a few soft blobs and texture: JPEG-compressible like a photo, not like noise."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    a = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)), np.sin(4 * (x + y))], -1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        a += rng.uniform(-1, 1, 3) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / r**2)[..., None]
    a += 0.1 * (np.sin(80 * x) * np.sin(60 * y))[..., None]
    return np.clip((a - a.min()) / (a.max() - a.min()) * 255, 0, 255).astype(np.uint8)


def bench_decode(args) -> list[dict]:
    from siglip2 import data
    from siglip2.processing.image_processing import Siglip2ImageProcessor

    torch.set_num_threads(1)
    paths = make_photos(args.cache)
    M, ip = args.max_num_patches, Siglip2ImageProcessor(patch_size=16, max_num_patches=args.max_num_patches)
    fast = (16, M)
    rows = []
    providers = {
        "exact: decode": lambda p: data.decode_image(p),
        "exact: decode + preprocess": lambda p: data.naflex_collate([("k", data.decode_image(p))], ip),
        "fast: decode": lambda p: data.decode_image(p, fast=fast),
        "fast: decode + preprocess": lambda p: data.naflex_collate([("k", data.decode_image(p, fast=fast))], ip),
    }
    try:
        from transformers import Siglip2ImageProcessorPil
        from transformers.image_utils import load_image

        hf = Siglip2ImageProcessorPil()
        providers["transformers: load_image only"] = load_image
        providers["transformers: load_image + Siglip2ImageProcessorPil"] = lambda p: hf(
            load_image(p), max_num_patches=M, return_tensors="pt"
        )
    except ImportError:
        print("transformers not installed: no baseline row", file=sys.stderr)
    times = {name: [] for name in providers}
    for fn in providers.values():
        fn(paths[0])
    for _ in range(args.rep):  # providers interleaved per file, so a shared machine's load hits them alike
        for p in paths:
            for name, fn in providers.items():
                t = time.perf_counter()
                fn(p)
                times[name].append(time.perf_counter() - t)
    from siglip2.profile.timing import Timing

    base = times.get("exact: decode + preprocess")
    for name, ts in times.items():
        t = Timing([x * 1e3 for x in ts], "time.perf_counter per file, providers interleaved")
        row = {"case": f"{len(paths)} x 12 MP JPEG, M={M}", "provider": name, **t.fields()}
        row["images_per_s_per_core"] = 1e3 / float(t)
        # the spread above mixes the files' own costs with noise; the speedup pairs each call with the baseline's
        # on the same file in the same round, so the files' costs cancel: median and IQR of those ratios
        ratios = Timing([b / x for b, x in zip(base, ts)], "paired ratios") if base else None
        if ratios is not None:
            row["speedup_vs_exact"] = float(ratios)
            row["speedup_q1"], row["speedup_q3"] = ratios.q1, ratios.q3
            if ratios.q1 <= 1.0 <= ratios.q3 and name != "exact: decode + preprocess":
                row["speedup_vs_exact"] = "within noise"
        rows.append(row)
    return rows


def _random_model(
    hidden=768, layers=12, heads=12, inter=3072, patch=16, num_patches=256, dtype=torch.float32, device="cpu", seed=0
):
    from siglip2.fast import Siglip2Model
    from siglip2.models.configuration import Siglip2Config

    torch.manual_seed(seed)
    text = dict(
        vocab_size=1000,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=1,
        num_attention_heads=heads,
        max_position_embeddings=64,
    )
    vision = dict(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        patch_size=patch,
        num_patches=num_patches,
    )
    with torch.device(device):
        model = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision))
    return model.to(dtype).eval()


def bench_fidelity(args) -> list[dict]:
    from siglip2 import data
    from siglip2.processing.image_processing import Siglip2ImageProcessor

    paths = make_photos(args.cache)
    M = args.max_num_patches
    if args.model:
        from siglip2.pipeline import load_model
        from siglip2.processing.image_processing import image_processor_from_pretrained

        model, d = load_model(args.model, device="cpu")
        ip, weights = image_processor_from_pretrained(d), args.model
    else:
        model, ip, weights = _random_model(), Siglip2ImageProcessor(), "random base-size (768, 12 layers)"
    P = int(ip.patch_size)
    exact = data.naflex_collate([(p, data.decode_image(p)) for p in paths], ip, max_num_patches=M)
    fast = data.naflex_collate([(p, data.decode_image(p, fast=(P, M))) for p in paths], ip, max_num_patches=M)
    assert torch.equal(exact["spatial_shapes"], fast["spatial_shapes"])
    mask = exact["pixel_attention_mask"].bool()
    diff = (exact["pixel_values"] - fast["pixel_values"])[mask]  # normalized units: [-1, 1] spans 255 levels
    with torch.no_grad():
        e = [
            model.get_image_features(**{k: b[k] for k in ("pixel_values", "pixel_attention_mask", "spatial_shapes")})
            for b in (exact, fast)
        ]
    cos = torch.nn.functional.cosine_similarity(e[0].float(), e[1].float(), dim=-1)
    return [
        {
            "case": f"{len(paths)} x 12 MP JPEG, M={M}",
            "weights": weights,
            "pixel_mean_abs_diff_8bit": float(diff.abs().mean() * 127.5),
            "pixel_max_abs_diff_8bit": float(diff.abs().max() * 127.5),
            "cosine_min": float(cos.min()),
            "cosine_median": float(cos.median()),
        }
    ]


def bench_e2e(args) -> list[dict]:
    """Stage times (serial) and pipeline wall times with 0 / 1 workers, through the streaming pipeline that
    embed-dataset runs (siglip2.data: NaFlexStream, its DataLoader, DevicePrefetcher). With one worker the wall
    time should approach max(decode + preprocess, model) instead of their sum."""
    from siglip2.data import NaFlexStream, open_source, plan_units
    from siglip2.processing.image_processing import Siglip2ImageProcessor

    torch.set_num_threads(1)
    d = os.path.join(args.cache, "e2e")
    for size in ((1600, 1200), (1200, 1600), (1920, 1080), (1024, 768), (2000, 1500), (1500, 1000)):
        make_photos(d, size=size)  # 48 JPEGs of 0.8-3 MP
    src = open_source(d)
    M, B = args.max_num_patches, 8
    ip = Siglip2ImageProcessor(patch_size=16, max_num_patches=M)
    model = _random_model(hidden=256, layers=4, heads=4, inter=1024)  # sized so model ~ decode + preprocess
    units = plan_units(src, len(src))

    class Timed(NaFlexStream):  # stamps when each chunk's decode + preprocess ran (in whichever process ran it)
        def process_chunk(self, *a):
            t0 = time.time()
            item = super().process_chunk(*a)
            item["busy"] = (t0, time.time())
            return item

    def stream(fast=False):
        return Timed(src, units, ip, max_num_patches=M, batch_size=B, fast_decode=fast)

    runs = [_e2e_once(args, src, units, ip, model, stream, M, B) for _ in range(args.rep)]
    rows = []
    for i, first in enumerate(runs[0]):  # the same stages in the same order in every run
        vals = [run[i]["s"] for run in runs]
        rows.append(
            {
                "stage": first["stage"],
                "s": statistics.median(vals),
                "s_min": min(vals),
                "s_max": max(vals),
                "n": len(vals),
                "images": first["images"],
            }
        )
    rows.append({"stage": "load average (1 min) of this machine", "value": os.getloadavg()[0]})
    return rows


def _e2e_once(args, src, units, ip, model, stream, M, B) -> list[dict]:
    """One pass of bench_e2e: the serial stage times, then the pipeline with 0 and 1 workers (seconds)."""
    from siglip2 import data
    from siglip2.data import DevicePrefetcher

    recs = list(src)
    t = time.perf_counter()
    imgs = [data.decode_image(r) for r in recs]
    t_decode = time.perf_counter() - t
    t = time.perf_counter()
    batches = [
        data.naflex_collate([(r.key, im) for r, im in zip(recs[i : i + B], imgs[i : i + B])], ip)
        for i in range(0, len(recs), B)
    ]
    t_pre = time.perf_counter() - t
    keys = ("pixel_values", "pixel_attention_mask", "spatial_shapes")
    dev = torch.device(args.device)
    t = time.perf_counter()
    moved = [{k: b[k].to(dev, non_blocking=True) for k in keys} for b in batches]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_h2d = time.perf_counter() - t
    model = model.to(dev)
    with torch.no_grad():
        model.get_image_features(**moved[0])
        t = time.perf_counter()
        for b in moved:
            model.get_image_features(**b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t_model = time.perf_counter() - t
    rows = [
        {"stage": "decode (serial)", "s": t_decode},
        {"stage": "preprocess (serial)", "s": t_pre},
        {"stage": "H2D" + (" (cpu: no copy)" if dev.type == "cpu" else ""), "s": t_h2d},
        {"stage": "model", "s": t_model},
    ]
    for workers in (0, 1):
        loader = stream().loader(num_workers=workers, prefetch_factor=4)
        wait, busy, model_spans = 0.0, [], []
        t = time.perf_counter()
        it = iter(DevicePrefetcher(loader, dev))
        with torch.no_grad():
            while True:
                t1 = time.time()
                entry = next(it, None)
                t2 = time.time()
                wait += t2 - t1
                if entry is None:
                    break
                if entry[2]:
                    busy.append(entry[0]["busy"])
                model.get_image_features(**{k: entry[1][k].to(dev) for k in keys})
                model_spans.append((t2, time.time()))
        run = sum(b - a for a, b in model_spans)
        overlap = sum(max(0.0, min(b, d) - max(a, c)) for a, b in model_spans for c, d in busy)
        name = f"pipeline, {workers} worker{'s' if workers != 1 else ''}"
        rows += [
            {"stage": f"{name}: wall", "s": time.perf_counter() - t},
            {"stage": f"{name}: main waits for data", "s": wait},
            {"stage": f"{name}: main runs the model", "s": run},
            {"stage": f"{name}: decode + preprocess while the model runs", "s": overlap},
        ]
    for r in rows:
        r["images"] = len(recs)
    return rows


def bench_gpu(args) -> list[dict]:
    """`siglip2 embed-dataset` on CUDA: a random So400m-shaped checkpoint (1152, 27 layers, patch 16), bf16,
    256 patches, synthetic 1024x768 JPEGs; images/s from the CLI's wall time, and the model alone."""
    import PIL.Image

    from siglip2.processing.image_processing import Siglip2ImageProcessor

    work = tempfile.mkdtemp(prefix="bench-data-gpu-")
    imgs = os.path.join(work, "imgs")
    os.makedirs(imgs)
    rng = np.random.default_rng(0)
    base = np.asarray(PIL.Image.open(make_photos(args.cache, size=(1024, 768))[0]))
    for i in range(args.num_images):
        a = np.roll(base, (int(rng.integers(0, 768)), int(rng.integers(0, 1024))), (0, 1))
        PIL.Image.fromarray(a).save(os.path.join(imgs, f"{i:05d}.jpg"), quality=90)
    ckpt = os.path.join(work, "so400m-random")
    cuda = args.device.startswith("cuda")  # on CPU: a tiny model, to smoke-test this function
    dtype, B = (torch.bfloat16, 256) if cuda else (torch.float32, 8)
    so400m, tiny = dict(hidden=1152, layers=27, heads=16, inter=4304), dict(hidden=64, layers=2, heads=2, inter=128)
    shape = so400m if cuda else tiny
    model = _random_model(**shape, dtype=dtype, device=args.device)
    model.save_pretrained(ckpt)
    Siglip2ImageProcessor(patch_size=16, max_num_patches=256).save_pretrained(ckpt)
    rows = []
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.no_grad():
        b = Siglip2ImageProcessor(max_num_patches=256)([PIL.Image.fromarray(base)] * B).to(args.device, dtype)
        for _ in range(3):
            model.get_image_features(**b)
        sync()
        t = time.perf_counter()
        for _ in range(10):
            model.get_image_features(**b)
        sync()
        rows.append({"case": f"model only, batch {B}", "images_per_s": 10 * B / (time.perf_counter() - t)})
    del model
    for extra in ([], ["--fast-decode"]):
        out = os.path.join(work, "out" + "".join(extra))
        cmd = [
            sys.executable,
            "-m",
            "siglip2",
            "embed-dataset",
            imgs,
            "--out",
            out,
            "--model",
            ckpt,
            "--dtype",
            str(dtype).replace("torch.", ""),
            "--batch-size",
            str(B),
            "--num-workers",
            str(args.workers),
            "--max-num-patches",
            "256",
            "--device",
            args.device,
            *extra,
        ]
        t = time.perf_counter()
        r = subprocess.run(cmd, check=True, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t
        summary = [line for line in r.stderr.splitlines() if line.startswith("embed-dataset:")][-1]
        print(summary, file=sys.stderr)
        rate = float(re.search(r"\(([0-9.]+) images/s", summary).group(1))
        rows.append(
            {
                "case": f"embed-dataset {' '.join(extra) or 'exact'}, {args.workers} workers, "
                f"{args.num_images} x 1024x768 JPEG",
                "images_per_s": rate,
                "images_per_s_with_startup": args.num_images / wall,
            }
        )
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["decode", "fidelity", "e2e", "gpu"])
    p.add_argument("--max-num-patches", type=int, default=256)
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "siglip2-bench-photos"))
    p.add_argument("--rep", type=int, default=3)
    p.add_argument("--model", default=None, help="a real checkpoint for `fidelity`")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-images", type=int, default=4096, help="`gpu`: images to embed")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="`gpu`: DataLoader workers")
    args = p.parse_args()
    fn = {"decode": bench_decode, "fidelity": bench_fidelity, "e2e": bench_e2e, "gpu": bench_gpu}[args.what]
    import PIL

    import siglip2

    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "pillow": PIL.__version__,
                "siglip2": siglip2.__version__,
                "cpu": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d"),
            }
        )
    )
    for r in fn(args):
        print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()

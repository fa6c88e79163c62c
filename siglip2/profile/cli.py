"""`siglip2 profile`: what each NaFlex sequence length (`max_num_patches`) does to your images and your hardware.

    siglip2 profile [IMAGE_OR_DIR ...] [--synthetic N] [--max-num-patches 64,128,256,576,784,1024]
                    [--model DIR | --config b16|so400m16|...] [--batch-size B] [--device D] [--dtype T]
                    [--json FILE] [--plots DIR] [--no-timing]

Per budget: the spatial_shapes histogram, aspect-ratio error, tokens per image, upsampled fraction, padding of the
padded (transformers) and packed (ours) layouts, FLOPs per image, timing of padded vs packed execution (the bench
harness's method, siglip2/profile/timing.py), and with --model the cosine of each image's embedding against the largest
budget. Reading guide and JSON schema: docs/naflex.md. Shape statistics live in siglip2/profile/stats.py, the
table and the recommendation in siglip2/report.py, the PNGs in siglip2/profile/plots.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

DEFAULT_BUDGETS = "64,128,256,576,784,1024"
DEFAULT_SYNTHETIC = 1000
# On CPU, timing runs by default only when one timing pass is cheap (see _timing_auto); B/16 at 1024 tokens is
# ~0.2 TFLOP per image, which takes seconds per image on a laptop-class CPU.
CPU_AUTO_TIMING_GFLOP = 50.0
MODES = ("padded", "padded-sdpa", "packed")

if TYPE_CHECKING:
    import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (__doc__ or "").split("\n\n")[0]  # (no docstrings under python -OO)
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR", help="image files or folders (recursive)")
    p.add_argument(
        "--synthetic",
        type=int,
        default=None,
        metavar="N",
        help=f"add N synthetic images with COCO-like sizes (default {DEFAULT_SYNTHETIC} when no input)",
    )
    p.add_argument(
        "--max-num-patches",
        default=DEFAULT_BUDGETS,
        metavar="LIST",
        help=f"comma-separated budgets (default {DEFAULT_BUDGETS})",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="a SigLIP2 NaFlex checkpoint: its weights, processor and the quality (drift) numbers",
    )
    src.add_argument(
        "--config", default=None, help="a named model size, random weights: tiny, b16, l16, so400m16, g16 (default b16)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="images per timed batch (default 32 CUDA, 4 CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default bfloat16 on CUDA, float32 on CPU",
    )
    p.add_argument(
        "--timing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time padded vs packed execution (default: on for CUDA; on CPU only when cheap)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="CPU timing: at least this many timed calls (and 0.5 s of them) after a warm-up that lets the "
        "timings settle; the median and interquartile range are reported (default 3)",
    )
    p.add_argument("--quality-images", type=int, default=256, help="with --model: images in the drift measurement")
    p.add_argument(
        "--max-drift",
        type=float,
        default=0.02,
        help="recommend the smallest budget whose drift (1 - mean cosine, upper 95%% bound) is <= this (with "
        "--model; default 0.02)",
    )
    p.add_argument(
        "--target-images-per-s",
        type=float,
        default=None,
        help="recommend the largest budget whose packed images/s meets this (needs timing)",
    )
    p.add_argument("--seed", type=int, default=0, help="synthetic sizes and the timed batch's sample")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON (schema: docs/naflex.md)")
    p.add_argument("--plots", default=None, metavar="DIR", help='write PNG plots (needs pip install -e ".[plot]")')
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_budgets(text: str) -> list[int]:
    from ..pipeline import MAX_NUM_PATCHES

    try:
        vals = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError as e:
        raise ValueError(f"--max-num-patches: expected comma-separated integers, got {text!r}") from e
    if not vals or vals[0] < 1 or vals[-1] > MAX_NUM_PATCHES:
        # the same cap as classify / embed: memory grows with its square (a billion fails allocating TiBs)
        raise ValueError(f"--max-num-patches: expected integers in 1..{MAX_NUM_PATCHES}, got {text!r}")
    return vals


def _check_json_path(path: str | None) -> None:
    """--json is renamed into place at the end: refuse up front anything there that is not a regular file (a
    device, a FIFO, a directory), which the rename would replace."""
    import stat

    if path is None:
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISFIFO, "a FIFO"))
        kind = next((k for t, k in kinds if t(mode)), "not a regular file")
        raise ValueError(f"--json: {os.path.abspath(path)!r} is {kind}, not a regular file; give a file path")


def _check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "repeats", "quality_images", "synthetic"):
        v = getattr(args, name)
        lo = 0 if name == "synthetic" else 1
        if v is not None and v < lo:
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= {lo}, got {v}")
    if not 0 <= args.max_drift <= 2:
        raise ValueError(f"--max-drift: expected a value in [0, 2] (1 - cosine), got {args.max_drift}")
    if args.target_images_per_s is not None and not args.target_images_per_s > 0:
        raise ValueError(f"--target-images-per-s: expected a positive number, got {args.target_images_per_s}")


def _device(name: str | None) -> torch.device:
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {name!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name!r} requested but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {name!r}")
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)  # do_bench and the peak-memory counters use the current device
    return dev


def load_model(args, device, dtype, need_weights: bool):
    """(our Siglip2VisionModel on device or None, its vision config, its image processor, a label).
    Without --model the weights are random and only built when something runs the model (`need_weights`)."""
    from .. import reference
    from ..models.configuration import Siglip2VisionConfig
    from ..processing.image_processing import PREPROCESSOR_CONFIG, Siglip2ImageProcessor
    from .stats import NAMED_CONFIGS

    model = None
    if args.model:
        from ..checkpoints.loading import resolve_dir

        d = resolve_dir(args.model)
        model = reference.Siglip2VisionModel.from_pretrained(d, dtype=dtype, device=device)
        cfg = model.config
        if os.path.exists(os.path.join(d, PREPROCESSOR_CONFIG)):
            proc = Siglip2ImageProcessor.from_pretrained(d)
        else:
            proc = Siglip2ImageProcessor(patch_size=cfg.patch_size)
        label = f"checkpoint {args.model}"
    else:
        name = args.config or "b16"
        if name not in NAMED_CONFIGS:
            raise ValueError(f"--config: expected one of {', '.join(NAMED_CONFIGS)}, got {name!r}")
        cfg = Siglip2VisionConfig(**NAMED_CONFIGS[name])
        if need_weights:
            import torch

            torch.manual_seed(0)
            model = reference.Siglip2VisionModel(cfg).to(device=device, dtype=dtype)
        proc = Siglip2ImageProcessor(patch_size=cfg.patch_size)
        label = f"config {name}" + (" (random weights)" if need_weights else "")
    if not proc.do_resize:
        raise ValueError(
            "the checkpoint's preprocessor_config.json has do_resize=false; NaFlex profiling needs "
            "the processor to resize"
        )
    if proc.patch_size != cfg.patch_size:
        raise ValueError(f"preprocessor_config patch_size {proc.patch_size} != the model's {cfg.patch_size}")
    return (model.eval() if model is not None else None), cfg, proc, label


def _transformers_twin(model, cfg, device, dtype):
    """transformers' Siglip2VisionModel (sdpa) with our weights, or (None, why) when transformers is missing."""
    try:
        import transformers
    except ImportError:
        return None, "transformers not installed"
    fields = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_channels",
        "patch_size",
        "num_patches",
        "hidden_act",
        "layer_norm_eps",
        "vision_use_head",
    )
    try:  # an optional baseline: a transformers version that cannot build it costs the row, not the run
        hf_cfg = transformers.Siglip2VisionConfig(**{k: getattr(cfg, k) for k in fields})
        hf = transformers.Siglip2VisionModel._from_config(hf_cfg, attn_implementation="sdpa")
        hf.load_state_dict(model.state_dict())
    except Exception as e:
        return None, f"transformers {transformers.__version__} failed to build: {type(e).__name__}: {e}"[:200]
    # transformers wraps `to` with functools.wraps, which pyright types as an unbound method (a false "missing self")
    twin = hf.to(device=device, dtype=dtype).eval()  # pyright: ignore[reportCallIssue]
    return twin, f"transformers {transformers.__version__} sdpa"


def _timing_auto(args, device, cfg, budgets, batch) -> tuple[bool, str | None]:
    from .stats import flops_per_image

    if args.timing is not None:
        return args.timing, None
    if device.type == "cuda":
        return True, None
    calls = (1 + args.repeats) * len(MODES)
    gflop = sum(batch * flops_per_image(cfg, [m])["total"] for m in budgets) * calls / 1e9
    if gflop <= CPU_AUTO_TIMING_GFLOP:
        return True, None
    return False, (
        f"timing skipped: on CPU it would run ~{gflop:,.0f} GFLOP of forward passes (more than "
        f"{CPU_AUTO_TIMING_GFLOP:g}); pass --timing to run it anyway, or use a smaller --batch-size, "
        f"fewer budgets, --config tiny or a GPU"
    )


def time_budget(models, cfg, g_batch, M, device, dtype, repeats) -> dict:
    """Time one batch (the grids in g_batch) padded to M rows, in every execution mode, with the bench method."""
    import torch

    from .timing import bench_ms, peak_mem_mb

    B = len(g_batch)
    K = cfg.num_channels * cfg.patch_size**2
    gen = torch.Generator().manual_seed(0)
    pv = torch.zeros(B, M, K)
    mask = torch.zeros(B, M, dtype=torch.int32)
    for i, (h, w) in enumerate(g_batch.tolist()):
        pv[i, : h * w] = torch.randn(h * w, K, generator=gen)  # content does not change the time
        mask[i, : h * w] = 1
    pv, mask = pv.to(device, dtype), mask.to(device)
    ss = torch.as_tensor(g_batch, dtype=torch.int64, device=device)
    tokens = int(mask.sum())
    out = {}
    for mode, (model, impl, what) in models.items():
        if impl is not None:
            model.set_impl(*impl)

        def fn(model=model):
            with torch.no_grad():
                return model(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=ss).pooler_output

        ms = bench_ms(fn, warmup=1, rep=repeats, device=device.type)
        out[mode] = {
            "images_per_s": B / (ms * 1e-3),
            # the rate's interquartile range: the time's, inverted
            "images_per_s_lo": B / (ms.q3 * 1e-3),
            "images_per_s_hi": B / (ms.q1 * 1e-3),
            **{k: v for k, v in ms.fields("ms_per_batch").items() if k != "ms_per_batch"},
            "tokens_per_s": tokens / (ms * 1e-3),
            "ms_per_batch": ms,
            "peak_mem_mb": peak_mem_mb(fn, device.type),
            "batch_size": B,
            "batch_tokens": tokens,
            "impl": what,
        }
    return out


# Student's t 0.975 quantiles by degrees of freedom (1-30); 1.96 beyond: the drift's 95% interval for small samples
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t95(dof: int) -> float:
    """The two-sided 95% Student's t quantile for `dof` >= 1 degrees of freedom."""
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def _decodable(images, seed, unreadable: list[dict]) -> list:
    """(image, pixels) for each image whose pixels decode; the others are appended to `unreadable` (a header
    can be whole where the data is truncated: only decoding finds it)."""
    from ..pipeline import load_images as load_pixels
    from .stats import synthetic_pixels

    out = []
    for im in images:
        if im.path is None:
            out.append((im, synthetic_pixels(im, seed)))
            continue
        try:
            out.append((im, load_pixels([im.path])[0][0]))
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError ... for damaged data
            unreadable.append({"path": im.path, "error": f"{type(e).__name__}: {e}", "stage": "decode"})
    return out


def quality(model, proc, images, budgets, device, dtype, batch_size, seed, progress, unreadable=None) -> dict:
    """{budget: per-image cosine (float64) of the pooled embedding against the largest budget's}. Images whose
    pixels do not decode are left out and appended to `unreadable`."""
    import numpy as np
    import torch

    kernel_impl = "auto" if device.type == "cuda" else "reference"
    model.set_impl("triton", kernel_impl)
    ref_m = max(budgets)
    cos = {m: [] for m in budgets}
    from tqdm.auto import tqdm

    chunks = [images[s : s + batch_size] for s in range(0, len(images), batch_size)]
    for chunk in tqdm(chunks, desc="quality (embeddings per budget)", unit="batch", disable=not progress):
        pix = [px for _, px in _decodable(chunk, seed, unreadable if unreadable is not None else [])]
        if not pix:
            continue
        emb = {}
        for m in budgets:
            x = proc(pix, max_num_patches=m)
            x = {k: v.to(device, dtype=dtype if v.is_floating_point() else None) for k, v in x.items()}
            with torch.no_grad():
                e = model(**x).pooler_output.double()
            emb[m] = e / e.norm(dim=-1, keepdim=True)
        for m in budgets:
            cos[m] += (emb[m] * emb[ref_m]).sum(-1).clamp(-1, 1).cpu().tolist()
    if not cos[ref_m]:
        raise ValueError("--model: no image in the drift sample decodes (all listed as unreadable)")
    return {m: np.asarray(v) for m, v in cos.items()}


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from . import report
    from .stats import grids, load_images, shape_stats
    from .timing import environment, quiet_cuda_probe

    _check_args(args)
    quiet_cuda_probe()
    _check_json_path(args.json)
    if args.plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print('siglip2 profile: --plots needs matplotlib: pip install -e ".[plot]"', file=sys.stderr)
            return 1
    budgets = parse_budgets(args.max_num_patches)
    device = _device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    progress = not args.no_progress
    synthetic = args.synthetic if args.synthetic is not None else (0 if args.inputs else DEFAULT_SYNTHETIC)
    images, unreadable = load_images(args.inputs, synthetic, args.seed, progress)
    if not images:
        raise ValueError(
            f"no images: all {len(unreadable)} files are unreadable (first: {unreadable[0]['path']}: "
            f"{unreadable[0]['error']})"
            if unreadable
            else "no images: give files or folders, or --synthetic N with N >= 1"
        )
    batch = min(args.batch_size or (32 if device.type == "cuda" else 4), len(images))
    # the config first (a checkpoint loads whole), so that random weights are only built when timing needs them
    model, cfg, proc, model_label = load_model(args, device, dtype, need_weights=False)
    do_time, timing_note = _timing_auto(args, device, cfg, budgets, batch)
    if model is None and do_time:
        model, cfg, proc, model_label = load_model(args, device, dtype, need_weights=True)

    entries, tokens_per_budget = [], {}
    for m in budgets:
        g = grids(images, proc, m)
        tokens_per_budget[m] = g[:, 0] * g[:, 1]
        entries.append(shape_stats(images, g, m, cfg))

    if do_time and device.type == "cpu":
        timing_note = "timing on CPU: the packed path runs the kernels' PyTorch reference ops"
    sample = np.random.default_rng(args.seed).permutation(len(images))[:batch]
    if do_time:
        from tqdm.auto import tqdm

        kernel_impl = "auto" if device.type == "cuda" else "reference"
        # mode -> (model, the (impl, kernel_impl) it runs with or None for transformers' own, what it is)
        models: dict[str, tuple[Any, tuple[str, str] | None, str]] = {
            "padded": (model, ("reference", "auto"), "siglip2.reference (eager, padded)")
        }
        hf, hf_what = _transformers_twin(model, cfg, device, dtype)
        if hf is not None:
            models["padded-sdpa"] = (hf, None, hf_what)
        else:
            timing_note = "; ".join(filter(None, [timing_note, f"padded-sdpa not timed: {hf_what}"]))
        models["packed"] = (model, ("triton", kernel_impl), f"siglip2.fast (packed, kernels {kernel_impl})")
        for e in tqdm(entries, desc="timing", unit="budget", disable=not progress):
            g = grids([images[i] for i in sample], proc, e["max_num_patches"])
            e["timing"] = time_budget(models, cfg, g, e["max_num_patches"], device, dtype, args.repeats)
        del hf, models
    else:
        for e in entries:
            e["timing"] = None

    drift = None
    if args.model:
        q = np.random.default_rng(args.seed).permutation(len(images))[: args.quality_images]
        sample = [images[i] for i in sorted(q)]
        drift = quality(model, proc, sample, budgets, device, dtype, batch, args.seed, progress, unreadable)
        for e in entries:
            c = drift[e["max_num_patches"]]
            e.update(
                drift_cosine_mean=float(c.mean()),
                # the mean's 95% confidence half-width over the sampled images (Student's t); None for one image
                drift_cosine_ci95=float(t95(len(c) - 1) * c.std(ddof=1) / np.sqrt(len(c))) if len(c) > 1 else None,
                drift_images=len(c),
                drift_cosine_min=float(c.min()),
                drift_cosine_p05=float(np.percentile(c, 5)),
            )

    env = environment()
    env.update(torch_device=str(device), dtype=str(dtype).removeprefix("torch."))
    result = report.assemble(
        entries,
        env=env,
        model_label=model_label,
        cfg=cfg,
        images=images,
        synthetic=synthetic,
        batch=batch,
        args=args,
        timing_note=timing_note,
        unreadable=unreadable,
    )
    print(report.table(result))
    if args.json:
        _check_json_path(args.json)  # again: profiling took a while
        report.write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plots:
        from .plots import write_plots

        for path in write_plots(result, tokens_per_budget, drift, args.plots):
            print(f"wrote {path}")
    return 0

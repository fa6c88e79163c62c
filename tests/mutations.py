"""Mutation check: break the code on purpose, one line at a time, and see which tests notice.

    python tests/mutations.py              # every mutation (several minutes: the relevant tests run per mutation)
    python tests/mutations.py --only qkv   # the mutations whose name contains "qkv"
    python tests/mutations.py --list
    python tests/mutations.py --control    # each selection unmutated: must pass, or CAUGHT means nothing

Each mutation replaces one exact snippet (which must occur exactly once, or it is reported as STALE: update it
with the code) in a temporary copy of the package, then runs only the tests relevant to it against that copy.
Every mutation must be CAUGHT. CI does not run this script; run it before resolving test-quality work and after
big changes, and paste its table into the closing note.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str
    new: str
    tests: list[str]  # pytest arguments


MUTATIONS = [
    Mutation(
        "auto-always-reference",
        "kernels/_utils.py",
        'return "triton" if runnable and triton_available() and unsupported is None else "reference"',
        'return "reference"',
        ["tests/test_modeling.py", "-k", "triton"],
    ),
    Mutation(
        "pooling-head-drops-q-bias",
        "siglip2/models/layers.py",
        "q = F.linear(self.probe.reshape(1, D), w[:D], b[:D])",
        "q = F.linear(self.probe.reshape(1, D), w[:D])",
        ["tests/test_modeling.py", "-k", "matches_transformers and triton"],
    ),
    # the fused bias in the order k, q, v: both the autograd path and the inference cache read `ps`
    Mutation(
        "qkv-bias-order-swapped",
        "siglip2/models/layers.py",
        "torch.cat((q.bias, k.bias, v.bias))",
        "torch.cat((k.bias, q.bias, v.bias))",
        ["tests/test_modeling.py", "-k", "siglip2_model_matches_transformers and triton"],
    ),
    Mutation(
        "pooling-head-drops-kv-bias",
        "siglip2/models/layers.py",
        "k, v = F.linear(hidden, w[D:], b[D:])",
        "k, v = F.linear(hidden, w[D:])",
        ["tests/test_modeling.py", "-k", "siglip2_model_matches_transformers and triton"],
    ),
    # a correct result from the wrong path: only the Triton launch counts can see these
    Mutation(
        "text-tower-on-reference",
        "siglip2/models/layers.py",
        "v.transpose(1, 2), mask, self.scale, impl=kernel_impl",
        'v.transpose(1, 2), mask, self.scale, impl="reference"',
        ["tests/test_modeling.py", "-k", "siglip2_model_matches_transformers and triton"],
    ),
    Mutation(
        "loss-on-reference",
        "siglip2/models/modeling.py",
        "self.logit_scale, self.logit_bias, impl=self.kernel_impl)",
        'self.logit_scale, self.logit_bias, impl="reference")',
        ["tests/test_modeling.py", "-k", "siglip2_model_matches_transformers and triton"],
    ),
    Mutation(
        "pipeline-loads-reference-model",
        "siglip2/pipeline.py",
        "    from . import fast\n\n    if model_type",
        "    from . import reference as fast\n\n    if model_type",
        ["tests/test_pipeline_cli.py", "tests/test_readme_example.py", "-k", "directory or cli_classify or readme"],
    ),
    Mutation(
        "patch-embed-kernel-drops-bias",
        "kernels/patch_embed_triton.py",
        "acc += tl.load(bias + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]",
        "acc += 0.0 * tl.load(bias + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]",
        ["tests/test_modeling.py", "-k", "matches_transformers and triton"],
    ),
    Mutation(
        "packed-path-skips-last-layer",
        "siglip2/models/layers.py",
        "        for layer in self.layers:\n            x, w = layer(x, mask, packed, kernel_impl, output_attentions)",
        "        for layer in (self.layers[:-1] if packed is not None else self.layers):\n"
        "            x, w = layer(x, mask, packed, kernel_impl, output_attentions)",
        ["tests/test_readme_example.py", "tests/test_modeling.py", "-k", "readme or half_precision"],
    ),
    Mutation(
        "text-kernel-ignores-padding",
        "siglip2/models/towers.py",
        "mask = None if attention_mask is None else attention_mask.bool()",
        "mask = None",
        ["tests/test_modeling.py", "-k", "matches_transformers and triton"],
    ),
    Mutation(
        "unpack-inverted",
        "siglip2/models/packing.py",
        "return out.masked_scatter(self.valid[..., None], x)",
        "return out.masked_scatter(~self.valid[..., None], x[: int((~self.valid).sum())])",
        ["tests/test_modeling.py", "-k", "triton"],
    ),
    Mutation(
        "attention-ignores-scale",
        "kernels/attention.py",
        "scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5\n"
        '    if impl == "reference":\n        return reference.varlen_attention',
        'scale = 1.0\n    if impl == "reference":\n        return reference.varlen_attention',
        ["tests/test_attention.py", "-k", "varlen and triton"],
    ),
    Mutation(
        "loss-kernel-drops-bias",
        "kernels/sigmoid_loss_triton.py",
        "b_logit = b_s * b_scale + b_bias",
        "b_logit = b_s * b_scale",
        ["tests/test_sigmoid_loss.py", "-k", "triton"],
    ),
    Mutation(
        "backend-ignores-padding-mask",
        "siglip2/integrations/transformers.py",
        'out = padded_attention(query, key, value, key_mask, scaling, impl=_state["impl"])',
        'out = padded_attention(query, key, value, None, scaling, impl=_state["impl"])',
        ["tests/test_transformers_integration.py", "-k", "padding or backend-Siglip2Model"],
    ),
    Mutation(
        "patched-tower-skips-rebind",
        "siglip2/integrations/transformers.py",
        "        if ours_mod._parameters[leaf] is not p:\n            ours_mod._parameters[leaf] = p",
        "        pass",
        ["tests/test_transformers_integration.py", "-k", "follows"],
    ),
    # the 16-byte stride hint claimed for strides that are not multiples of it: rows land at the wrong addresses
    Mutation(
        "stride-hint-always-on",
        "kernels/attention_triton.py",
        "    return n if all(s % n == 0 for t in tensors for s in t.stride()[:-1]) else 1",
        "    return n",
        ["tests/test_attention.py", "-k", "unaligned_strides"],
    ),
    # the locked tower's cache keyed by the sample alone: a later batch reads another image's embedding
    Mutation(
        "image-cache-serves-stale-rows",
        "siglip2/train/model.py",
        "        return torch.stack([self.store[k] for k in keys])",
        "        return torch.stack([self.store[k] for k in keys][::-1])",
        ["tests/test_train.py", "-k", "embedding_cache"],
    ),
    Mutation(
        "entry-check-skipped",
        "siglip2/models/validation.py",
        "    if not host[0]:\n",
        "    if True:\n",
        ["tests/test_validation.py"],
    ),
    # ---- the newer code (issue 27): each caught by a test that pins the value, not by a crash ----
    # the training schedule and optimizer: tests/test_train_optim.py records what AdamW steps with
    Mutation(
        "lr-warmup-starts-at-zero",
        "siglip2/train/model.py",
        "        return (step + 1) / warmup\n",
        "        return step / warmup\n",
        ["tests/test_train_optim.py", "-k", "lr_schedule"],
    ),
    Mutation(
        "lr-cosine-ignores-min-ratio",
        "siglip2/train/model.py",
        "    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))",
        "    return 0.5 * (1 + math.cos(math.pi * t))",
        ["tests/test_train_optim.py", "-k", "lr_schedule"],
    ),
    Mutation(
        "lr-cosine-counts-warmup-steps",
        "siglip2/train/model.py",
        "    t = min(1.0, (step - warmup) / max(1, total - warmup))",
        "    t = min(1.0, step / max(1, total))",
        ["tests/test_train_optim.py", "-k", "lr_schedule"],
    ),
    Mutation(
        "scheduler-steps-before-optimizer",
        "siglip2/train/loop.py",
        "run.optimizer.step()\n    run.scheduler.step()\n",
        "run.scheduler.step()\n    run.optimizer.step()\n",
        ["tests/test_train_optim.py", "-k", "lr_schedule"],
    ),
    Mutation(
        "decay-on-norms-and-logit-scale",
        "siglip2/train/model.py",
        'skip = p.ndim < 2 or name.endswith(".bias") or "logit_scale" in name or "logit_bias" in name or '
        '"norm" in name',
        'skip = name.endswith(".bias")',
        ["tests/test_train_optim.py", "-k", "decay_groups"],
    ),
    Mutation(
        "no-decay-on-embeddings",
        "siglip2/train/model.py",
        'skip = p.ndim < 2 or name.endswith(".bias") or "logit_scale" in name or "logit_bias" in name or '
        '"norm" in name',
        'skip = p.ndim < 2 or "embed" in name or name.endswith(".bias") or "logit" in name or "norm" in name',
        ["tests/test_train_optim.py", "-k", "decay_groups"],
    ),
    Mutation(
        "decay-groups-swapped",
        "siglip2/train/model.py",
        'return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]',
        'return [{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": weight_decay}]',
        ["tests/test_train_optim.py", "-k", "decay_groups"],
    ),
    Mutation(
        "grad-clip-never-applies",
        "siglip2/train/loop.py",
        'clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))',
        'clip_grad_norm_(params, float("inf"))',
        ["tests/test_train_optim.py", "-k", "clipped"],
    ),
    # the batch plan of train/data.py
    Mutation(
        "mixed-budget-overfills",
        "siglip2/train/data.py",
        "                if used + m > budget:\n",
        "                if used > budget:\n",
        ["tests/test_train.py", "-k", "plan_buckets"],
    ),
    Mutation(
        "ranks-draw-the-same-samples",
        "siglip2/train/data.py",
        "ranks = [[(cursor + r * n + i, m) for i in range(n)] for r in range(self.world_size)]",
        "ranks = [[(cursor + i, m) for i in range(n)] for r in range(self.world_size)]",
        ["tests/test_train.py", "-k", "plan_buckets"],
    ),
    # siglip2/data: token batches of the stream
    Mutation(
        "token-batch-overfills",
        "siglip2/data/streaming.py",
        "        if batch and total + n > tokens_per_batch:\n",
        "        if batch and total > tokens_per_batch:\n",
        ["tests/test_embed_dataset.py", "-k", "token_batches"],
    ),
    # embed-dataset: the done marker (the image shard) must be the unit's last file; tests/test_embed_crash.py
    # fails the job after every write and checks each unit is whole or absent, then the rerun's output
    Mutation(
        "embed-image-shard-written-first",
        "siglip2/embed_dataset/output.py",
        '    if buf["txt_keys"]:\n        save("txt", buf["txt"], buf["txt_keys"], dims[1], {})\n    save(\n'
        '        "img",\n        buf["img"],\n        buf["img_keys"],\n        dims[0],\n'
        '        {"errors": buf["errors"], "inputs": buf["n_inputs"], "texts": len(buf["txt_keys"])},\n    )\n',
        '    save(\n        "img",\n        buf["img"],\n        buf["img_keys"],\n        dims[0],\n'
        '        {"errors": buf["errors"], "inputs": buf["n_inputs"], "texts": len(buf["txt_keys"])},\n    )\n'
        '    if buf["txt_keys"]:\n        save("txt", buf["txt"], buf["txt_keys"], dims[1], {})\n',
        ["tests/test_embed_crash.py"],
    ),
    Mutation(
        "embed-keys-written-after-shard",
        "siglip2/embed_dataset/output.py",
        '        atomic_write_text(os.path.join(out, f"{prefix}-{unit.name}.keys.txt"), keys_text)\n'
        '        path = os.path.join(out, f"{prefix}-{unit.name}.safetensors")\n'
        "        remove_stale_temps(path)  # a killed run's shard temp file: its process is gone\n"
        '        tmp = f"{path}.tmp-{os.getpid()}"\n'
        "        try:\n"
        "            # one metadata key: safetensors writes several in a per-process random (hash map) order\n"
        '            meta = {"siglip2": json.dumps(dict(extra, run=run_id, rows=len(keys)), sort_keys=True)}\n'
        '            save_file({"embeddings": emb.contiguous()}, tmp, metadata=meta)\n'
        "            os.replace(tmp, path)\n",
        '        path = os.path.join(out, f"{prefix}-{unit.name}.safetensors")\n'
        "        remove_stale_temps(path)  # a killed run's shard temp file: its process is gone\n"
        '        tmp = f"{path}.tmp-{os.getpid()}"\n'
        "        try:\n"
        "            # one metadata key: safetensors writes several in a per-process random (hash map) order\n"
        '            meta = {"siglip2": json.dumps(dict(extra, run=run_id, rows=len(keys)), sort_keys=True)}\n'
        '            save_file({"embeddings": emb.contiguous()}, tmp, metadata=meta)\n'
        "            os.replace(tmp, path)\n"
        '            atomic_write_text(os.path.join(out, f"{prefix}-{unit.name}.keys.txt"), keys_text)\n',
        ["tests/test_embed_crash.py"],
    ),
    Mutation(
        "embed-temp-shard-left-on-failure",
        "siglip2/embed_dataset/output.py",
        "            os.replace(tmp, path)\n        finally:\n"
        "            if os.path.exists(tmp):\n                os.remove(tmp)\n",
        "            os.replace(tmp, path)\n        finally:\n            pass\n",
        ["tests/test_embed_crash.py"],
    ),
    Mutation(
        "embed-manifest-counts-rows-as-texts",
        "siglip2/embed_dataset/output.py",
        '        counts["texts"] += texts\n',
        '        counts["texts"] += rows\n',
        ["tests/test_embed_dataset.py", "-k", "folder_matches"],
    ),
    # the profiler's statistics: tests/test_profile_stats.py, by hand
    Mutation(
        "profile-native-size-counts-upsampled",
        "siglip2/profile/stats.py",
        "    upsampled = target[:, 0] * target[:, 1] > native[:, 0] * native[:, 1]",
        "    upsampled = target[:, 0] * target[:, 1] >= native[:, 0] * native[:, 1]",
        ["tests/test_profile_stats.py", "-k", "by_hand or native"],
    ),
    Mutation(
        "profile-batch-tokens-padded",
        "siglip2/profile/cli.py",
        "    tokens = int(mask.sum())\n",
        "    tokens = int(mask.numel())\n",
        ["tests/test_profile_stats.py", "-k", "timed_batch"],
    ),
    Mutation(
        "profile-aspect-p95-is-max",
        "siglip2/profile/stats.py",
        '        "aspect_error_p95": float(np.percentile(aspect_err, 95)),',
        '        "aspect_error_p95": float(aspect_err.max()),',
        ["tests/test_profile_stats.py", "-k", "by_hand"],
    ),
    Mutation(
        "profile-histogram-by-shape-not-count",
        "siglip2/profile/stats.py",
        "    order = sorted(range(len(counts)), key=lambda i: (-counts[i], tuple(shapes[i])))",
        "    order = sorted(range(len(counts)), key=lambda i: tuple(shapes[i]))",
        ["tests/test_profile_stats.py", "-k", "by_hand"],
    ),
    Mutation(
        "profile-warns-at-exactly-half-upsampled",
        "siglip2/profile/report.py",
        '    if e["upsampled_fraction"] > MOSTLY_UPSAMPLED:',
        '    if e["upsampled_fraction"] >= MOSTLY_UPSAMPLED:',
        ["tests/test_profile_stats.py", "-k", "warning"],
    ),
    # the transformers integration: patch -> unpatch -> patch (tests/test_integration_repatch.py)
    Mutation(
        "unpatch-leaves-marker",
        "siglip2/integrations/transformers.py",
        "        object.__delattr__(mod, _PATCHES)\n",
        "        pass\n",
        ["tests/test_integration_repatch.py", "-k", "runs_the_kernels_again"],
    ),
    Mutation(
        "unpatch-leaves-forward",
        "siglip2/integrations/transformers.py",
        "            del mod.forward\n",
        "            pass\n",
        ["tests/test_integration_repatch.py", "-k", "runs_the_kernels_again"],
    ),
    # saving: a re-save must remove the files of the checkpoint it replaces
    Mutation(
        "resave-keeps-stale-files",
        "siglip2/checkpoints/saving.py",
        "    stale = sorted(_current_files(directory) - set(files))",
        "    stale = []",
        ["tests/test_loading.py", "-k", "sharded or atomic or journal"],
    ),
    # packing: each image's valid length is h*w
    Mutation(
        "packed-lengths-square",
        "siglip2/models/packing.py",
        "        lengths = tuple(h * w for h, w in pairs) if valid is not None else (int(seq_len),) * len(pairs)",
        "        lengths = tuple(h * h for h, w in pairs) if valid is not None else (int(seq_len),) * len(pairs)",
        ["tests/test_modeling.py", "-k", "vision_model_without_head and triton"],
    ),
    # the position-table adjoint with several images per chunk (tests/test_patch_embed.py, > ADJ_MAX_CHUNKS images)
    Mutation(
        "pos-adjoint-drops-short-last-chunk",
        "kernels/patch_embed_triton.py",
        "    n_chunks = triton.cdiv(B, imgs)\n",
        "    n_chunks = B // imgs\n",
        ["tests/test_patch_embed.py", "-k", "many_images and padded"],
    ),
    Mutation(
        "pos-adjoint-one-image-per-chunk",
        "kernels/patch_embed_triton.py",
        "    b_end = tl.minimum((i_c + 1) * IMGS_PER_PROG, B)\n",
        "    b_end = tl.minimum(i_c * IMGS_PER_PROG + 1, B)\n",
        ["tests/test_patch_embed.py", "-k", "many_images and packed"],
    ),
    # siglip2 profile's decision (tests/test_profile_decision.py)
    Mutation(
        "profile-noisy-timing-trusted",
        "siglip2/profile/report.py",
        '    noisy = [e["max_num_patches"] for e in timed if e["timing"]["packed"].get("noisy")]\n',
        "    noisy = []\n",
        ["tests/test_profile_decision.py"],
    ),
    Mutation(
        "profile-drift-mean-only",
        "siglip2/profile/report.py",
        'if has_drift and 1 - e["drift_cosine_mean"] + e.get("drift_cosine_ci95", 0.0) <= max_drift',
        'if has_drift and 1 - e["drift_cosine_mean"] <= max_drift',
        ["tests/test_profile_decision.py", "tests/test_profile.py", "-k", "drift"],
    ),
    Mutation(
        "profile-unreadable-file-fatal",
        "siglip2/profile/stats.py",
        "        except ValueError as e:\n            cause = e.__cause__ or e\n",
        "        except KeyError as e:\n            cause = e.__cause__ or e\n",
        ["tests/test_profile_decision.py", "-k", "unreadable"],
    ),
    Mutation(
        "profile-default-recommends-none",
        "siglip2/profile/report.py",
        '    if entries and all("upsampled_fraction" in e for e in entries):\n',
        "    if False:\n",
        ["tests/test_profile_decision.py"],
    ),
]


def _copy_tree(dst: str) -> str:
    """The package laid out as installed (kernels/ inside siglip2/), plus tests/, pyproject.toml and README.md."""
    pkg = os.path.join(dst, "pkg")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(ROOT, "siglip2"), os.path.join(pkg, "siglip2"), ignore=ignore)
    # siglip2/kernels/ (its __init__) is already there: kernels/*.py join it, as a wheel lays them out
    shutil.copytree(
        os.path.join(ROOT, "kernels"), os.path.join(pkg, "siglip2", "kernels"), ignore=ignore, dirs_exist_ok=True
    )
    shutil.copytree(os.path.join(ROOT, "tests"), os.path.join(dst, "tests"), ignore=ignore)
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), dst)
    shutil.copy(os.path.join(ROOT, "README.md"), dst)  # tests/test_readme_example.py runs its examples
    return pkg


def _target(pkg: str, dst: str, rel: str) -> str:
    if rel.startswith("kernels/"):
        return os.path.join(pkg, "siglip2", rel)
    if rel.startswith("siglip2/"):
        return os.path.join(pkg, rel)
    return os.path.join(dst, rel)


def run(m: Mutation, timeout: int, control: bool = False) -> tuple[str, float]:
    """CAUGHT / NOT CAUGHT for the mutation; with `control`, PASS / FAIL of its test selection on the unmutated copy."""
    with tempfile.TemporaryDirectory(prefix="siglip2-mut-") as dst:
        pkg = _copy_tree(dst)
        path = _target(pkg, dst, m.path)
        with open(path) as f:
            src = f.read()
        if src.count(m.old) != 1:
            return "STALE", 0.0
        if not control:
            with open(path, "w") as f:
                f.write(src.replace(m.old, m.new))
        env = dict(os.environ, PYTHONPATH=pkg + os.pathsep + os.environ.get("PYTHONPATH", ""))
        check = subprocess.run(
            [sys.executable, "-c", "import siglip2; print(siglip2.__file__)"],
            env=env,
            cwd=dst,
            capture_output=True,
            text=True,
        )
        if not check.stdout.startswith(pkg):
            raise RuntimeError(f"the mutated copy is not the one imported: {check.stdout or check.stderr}")
        t0 = time.time()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests],
                env=env,
                cwd=dst,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return "TIMEOUT", time.time() - t0
        dt = time.time() - t0
        if proc.returncode == 5:
            return "NO TESTS", dt
        if control:
            return ("PASS" if proc.returncode == 0 else "FAIL"), dt
        return ("CAUGHT" if proc.returncode != 0 else "NOT CAUGHT"), dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run the mutations whose name contains this")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--control", action="store_true", help="run each selection on the unmutated copy (must pass)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per mutation")
    a = ap.parse_args(argv)
    todo = [m for m in MUTATIONS if a.only is None or a.only in m.name]
    if a.list:
        for m in todo:
            print(f"{m.name:32s} {m.path:40s} {' '.join(m.tests)}")
        return 0
    rows = []
    for m in todo:
        verdict, dt = run(m, a.timeout, a.control)
        rows.append((m.name, verdict, dt))
        print(f"{m.name:32s} {verdict:10s} {dt:6.0f} s", flush=True)
    print("\n| mutation | result | seconds |\n|---|---|---|")
    for name, verdict, dt in rows:
        print(f"| {name} | {verdict} | {dt:.0f} |")
    return 0 if all(v == ("PASS" if a.control else "CAUGHT") for _, v, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Every code block of README.md runs as written, on CPU, with local stand-ins for what it downloads or reads.

The test works in a scratch directory that holds what the README names: `./siglip2-base-patch16-naflex` (a tiny
random checkpoint, tests/tiny.py, saved with patch 8, 14 or 16), `cat.jpg`, `my_images/`, `photos/`, `pairs.csv`,
`./tok`. The only edits to the README's text are string replacements of the two hub ids by local directories.

- ```python blocks run in order in one namespace (later blocks use `ckpt` and `device` from the quick example),
  with each checkpoint patch size; the quick example runs the Triton kernels (through the interpreter) and its
  scores match the reference model.
- ```bash blocks: every `siglip2 ...` / `python -m siglip2 ...` / `torchrun ... -m siglip2 ...` command must parse
  with the CLI's own parser; the cheap ones run for real on the tiny checkpoint (see `_why_not_run`). Any other
  command must be on the SKIP list below, with the reason it is not run.
"""

import ast
import csv
import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from launches import count_triton_launches
from test_pipeline_cli import assert_fast_path_ran
from tiny import save_pipeline_checkpoint

README = Path(__file__).resolve().parent.parent / "README.md"
HUB_ID = '"google/siglip2-base-patch16-naflex"'
LOCAL = "./siglip2-base-patch16-naflex"  # the README's own name for a local checkpoint: the stand-in is saved there
VLM_ID = '"LiquidAI/LFM2-VL-450M"'
# bash lines that are not siglip2 commands, and why this test does not run them
SKIP = {
    "pip install": "installs packages: this test runs in the environment they were installed into",
    "python bench/run.py": "the benchmark: minutes of kernel timings, meant for a GPU",
    "python -m pytest": "the test suite itself",
    "pre-commit": "installs git hooks",
}


def blocks(lang):
    """The README's ```lang fenced blocks, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.M | re.S)


def _image(path, h, w, seed):
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """workdir(P): a scratch directory with everything the README names, its checkpoint at patch size P."""
    made = {}

    def make(P):
        if P not in made:
            d = tmp_path_factory.mktemp(f"readme-p{P}")
            save_pipeline_checkpoint(d / LOCAL, patch=P, heads=2)  # 2 heads: half the interpreter's attention time
            _image(d / "cat.jpg", 48, 64, 0)
            for name, sizes in (("my_images", [(30, 50), (64, 20)]), ("photos", [(40, 40), (20, 70)])):
                (d / name).mkdir()
                for i, (h, w) in enumerate(sizes):
                    _image(d / name / f"{i}.png", h, w, i + 1)
            # 300 distinct rows: the README's `train --dry-run` plans batches of up to 256 pairs, and train refuses
            # a batch larger than its table (a pair's own copy would be its negative); keys must be unique
            (d / "pairs").mkdir()
            rows = [["cat.jpg", "a cat"]]
            for i in range(299):
                PIL.Image.new("RGB", (24 + i % 7, 16 + i % 5), (i % 256, 40, 90)).save(d / "pairs" / f"{i}.png")
                rows.append([f"pairs/{i}.png", f"picture {i}"])
            with open(d / "pairs.csv", "w", newline="") as f:
                csv.writer(f).writerows([["image", "caption"], *rows])
            (d / "tok").mkdir()
            for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                (d / "tok" / f).write_bytes((d / LOCAL / f).read_bytes())
            made[P] = d
        return made[P]

    return make


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    """A tiny random LFM2-VL (a VLM with a SigLIP2 vision tower), saved: the stand-in for the README's VLM."""
    from test_transformers_integration import _lfm2_vl

    d = tmp_path_factory.mktemp("lfm2-vl")
    _lfm2_vl().save_pretrained(d)
    return str(d)


def run_block(src, ns, name):
    """exec `src` in `ns`; a trailing expression is evaluated into ns["_"], as a REPL would show it."""
    tree = ast.parse(src, name)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), ns)
    if last is not None:
        ns["_"] = eval(compile(ast.Expression(last.value), name, "eval"), ns)


@pytest.mark.parametrize("P", [8, 14, 16])
def test_readme_python_blocks(P, workdir, vlm_dir, monkeypatch):
    from siglip2.pipeline import DEFAULT_TEMPLATE
    from siglip2.reference import Siglip2Model as Reference

    monkeypatch.chdir(workdir(P))
    reference = Reference.from_pretrained(LOCAL, dtype=torch.float32, device="cpu")
    srcs = blocks("python")
    assert len(srcs) >= 4, "README: expected the quick example, zero-shot, kernels and transformers blocks"
    text = "\n".join(srcs)
    assert text.count(HUB_ID) == 1 and text.count(VLM_ID) == 1, "README: update the stand-ins in this test"
    ns = {"__name__": "readme"}
    checked = set()
    for i, src in enumerate(srcs):
        src = src.replace(HUB_ID, repr(LOCAL)).replace(VLM_ID, repr(vlm_dir))
        with count_triton_launches() as launches:
            run_block(src, ns, f"README.md python block {i}")
        if "Siglip2Processor.from_pretrained" in src:  # the quick example: Triton kernels, reference scores
            assert_fast_path_ran(launches)
            assert ns["inputs"]["pixel_values"].shape[-1] == 3 * P * P
            with torch.no_grad():
                want = reference(**ns["inputs"]).logits_per_image
            assert torch.allclose(ns["out"].logits_per_image, want, atol=1e-4, rtol=0)
            assert ns["probs"].shape == (1, 2)
            checked.add("quick")
        elif "zero_shot_classify(" in src:  # the pipeline's order and scores, from the reference model
            assert_fast_path_ran(launches)
            proc = ns["processor"]
            prompts = [DEFAULT_TEMPLATE.format(label) for label in ("cat", "dog")]
            check = dict(proc.image_processor(PIL.Image.open("cat.jpg")))  # the pipeline's budget: the saved one
            check.update(proc.tokenizer(prompts, padding="max_length", max_length=64, truncation=True))
            with torch.no_grad():
                scores = torch.sigmoid(reference(**check).logits_per_image)[0].tolist()
            res = ns["_"][0]
            assert [r["label"] for r in res] == (["cat", "dog"] if scores[0] >= scores[1] else ["dog", "cat"])
            assert np.allclose(sorted(scores, reverse=True), [r["score"] for r in res], atol=1e-5, rtol=0)
            checked.add("zero-shot")
        elif "sigmoid_loss(" in src:
            assert ns["o"].shape == ns["q"].shape and torch.isfinite(ns["o"]).all() and torch.isfinite(ns["loss"])
            assert launches["_attn_fwd_kernel"] >= 1, dict(launches)
            checked.add("kernels")
        elif "patch_transformers(" in src:
            assert ns["vlm"].config.vision_config._attn_implementation == "siglip2_triton"
            assert ns["model"].config._attn_implementation == "siglip2_triton"
            checked.add("transformers")
    assert checked == {"quick", "zero-shot", "kernels", "transformers"}


def commands():
    """(line, launcher, argv) for every command line of the README's ```bash blocks (continuations joined).
    A `siglip2 SUB ...` whose first argument is `...` means "the previous SUB command's arguments": it gets them."""
    out, previous = [], {}
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if words[0] == "siglip2":
                launcher, argv = "siglip2", words[1:]
            elif words[:3] == ["python", "-m", "siglip2"]:
                launcher, argv = "python -m", words[3:]
            elif words[0] == "torchrun" and "-m" in words and words[words.index("-m") + 1] == "siglip2":
                launcher, argv = "torchrun", words[words.index("-m") + 2 :]
            else:
                known = any(line.lstrip().startswith(k) for k in SKIP)
                assert known, f"README: a command this test neither runs nor skips (add it to SKIP): {line!r}"
                continue
            if len(argv) > 1 and argv[1] == "...":
                argv = argv[:1] + previous[argv[0]] + argv[2:]
            previous[argv[0]] = argv[1:]
            out.append((line.strip(), launcher, argv))
    return out


def _why_not_run(launcher, argv, args):
    """None for the commands this test runs on CPU, else why it only parses them."""
    if launcher == "torchrun":
        return "several processes (GPUs)"
    if argv[0] == "train":
        return None if args.dry_run else "a training run"
    if argv[0] in ("classify", "embed", "embed-dataset") and not os.path.isdir(args.model):
        return f"--model {args.model!r} is not a local checkpoint"
    if argv[0] == "embed-dataset" and not os.path.exists(args.input):
        return f"{args.input!r}: no such input here"
    return None


def test_readme_bash_commands(workdir, monkeypatch, capsys):
    # private: the CLI's argument parser, to check that each README command parses before it runs
    from siglip2.__main__ import _parser, main

    d = workdir(14)  # a patch size other than 16: every command must take the checkpoint's
    monkeypatch.chdir(d)
    cmds = commands()
    subs = {argv[0] for _, _, argv in cmds}
    assert {"classify", "embed", "profile", "embed-dataset", "train"} <= subs, subs
    ran = []
    for line, launcher, argv in cmds:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"README: the CLI's parser refuses {line!r}: {capsys.readouterr().err.strip()} ({e})")
        if _why_not_run(launcher, argv, args) is not None:
            continue
        if args.command == "profile" and args.plots:
            try:
                import matplotlib  # noqa: F401
            except ImportError:  # the [plot] extra: without it, the same run without the plots
                i = argv.index("--plots")
                argv = argv[:i] + argv[i + 2 :]
        assert main(argv) == 0, f"{line!r}: {capsys.readouterr().err.strip()}"
        ran.append(argv[0])
    assert sorted(ran) == ["classify", "embed", "embed-dataset", "export-kernel", "profile", "profile", "train"], ran
    assert (d / "siglip2-kernel" / "build" / "torch-cpu" / "metadata.json").is_file()  # export-kernel wrote its build
    from safetensors import safe_open

    with safe_open(str(d / "embeddings.safetensors"), "pt") as f:
        assert f.get_tensor("image_embeds").shape == (1, 32) and f.get_tensor("text_embeds").shape == (1, 32)
    assert json.loads((d / "profile.json").read_text())["model"]["patch_size"] == 14
    manifest = json.loads((d / "emb" / "manifest.json").read_text())
    assert manifest["preprocessing"]["patch_size"] == 14 and manifest["counts"]["images"] == 2

"""The figures in README.md and docs/ come from committed results folders; this script writes them there.

    python bench/update_docs.py            # refresh every generated block of README.md and docs/*.md
    python bench/update_docs.py --check    # exit 1 when a block differs from its source, or a linked image is gone
    python bench/update_docs.py naflex     # rebuild docs/naflex.md's worked examples into bench/results/naflex-docs/

A generated block names its source in an HTML comment, which Markdown does not render:

    <!-- include bench/results/<run>/results.md -->      the file's body (its title line dropped, headings demoted
    ...                                                  two levels): a bench/run.py run's provenance and tables
    <!-- end include -->

    <!-- include bench/results/naflex-docs/photos/stdout.txt text -->   the file in a fenced block, as printed

To show a new run, point the comment at its folder and rerun the script: nothing in a block is typed by hand, and
`--check` (tests/test_docs_generated.py, in CI) fails when someone does. Images are linked to the same folders
(`![..](../bench/results/<run>/x.png)`); `--check` also fails on a link to a file that is not there.

`naflex` builds the worked examples of docs/naflex.md from scratch: the photo set (scikit-image's bundled images,
listed in NAFLEX_PHOTOS, written as PNG, plus one JPEG cut in half to show how a damaged file is reported), a tiny
random checkpoint, and three `siglip2 profile` runs; each run's command line, stdout, JSON and PNGs land in
bench/results/naflex-docs/<example>/, and photos.json records every photo's source, size and sha256.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [
    "README.md",
    *sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")),
]
BLOCK = re.compile(r"(<!-- include (\S+)(?: (text))? -->\n)(.*?)(<!-- end include -->)", re.S)
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")

# scikit-image's bundled images (shipped in its wheel, no download), by their skimage.data function. Grey and
# binary ones are written as RGB, RGBA is flattened onto white: what a user's photo folder holds.
NAFLEX_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
NAFLEX_OUT = os.path.join("bench", "results", "naflex-docs")
# (example folder, siglip2 profile arguments): run in a scratch folder holding photos/ and tiny-ckpt/
NAFLEX_EXAMPLES = (
    ("default", []),
    ("timed", ["photos/", "--config", "tiny", "--batch-size", "8", "--timing"]),
    ("drift", ["photos/", "--model", "tiny-ckpt/", "--no-timing"]),
)


def render(source: str, mode: str | None) -> str:
    """The block text for one include: a file's body (title dropped, headings demoted two levels) or, with
    mode "text", the file in a fenced block."""
    path = os.path.join(ROOT, source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"include {source}: no such file (paths are relative to the repository root)")
    with open(path) as f:
        text = f.read().rstrip("\n")
    if mode == "text":
        return f"```\n{text}\n```\n"
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    out = ["##" + ln if ln.startswith("#") else ln for ln in lines]
    return "\n".join(out).strip("\n") + "\n"


def refresh(doc: str, check: bool) -> list[str]:
    """Rewrite (or, with check, compare) the generated blocks of one Markdown file; the problems found."""
    path = os.path.join(ROOT, doc)
    with open(path) as f:
        text = f.read()
    problems = []

    def sub(m: re.Match) -> str:
        new = render(m.group(2), m.group(3))
        if check and new != m.group(4):
            problems.append(f"{doc}: the block from {m.group(2)} differs from its source")
        return m.group(1) + new + m.group(5)

    new_text = BLOCK.sub(sub, text)
    for link in IMAGE.findall(new_text):
        if "://" in link:
            continue
        if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(path), link))):
            problems.append(f"{doc}: image {link} does not exist")
    if not check and new_text != text:
        with open(path, "w") as f:
            f.write(new_text)
    return problems


def _photos(folder: str) -> list[dict]:
    """NAFLEX_PHOTOS as RGB PNGs in `folder`, and one JPEG cut in half; their record for photos.json."""
    import numpy as np
    import PIL.Image
    import skimage
    import skimage.data

    os.makedirs(folder, exist_ok=True)
    record = []
    for name in NAFLEX_PHOTOS:
        a = np.asarray(getattr(skimage.data, name)())
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        img = PIL.Image.fromarray(a)
        if img.mode == "RGBA":
            bg = PIL.Image.new("RGB", img.size, "white")
            bg.paste(img, mask=img.getchannel("A"))
            img = bg
        img = img.convert("RGB")
        p = os.path.join(folder, f"{name}.png")
        img.save(p)
        record.append({"file": f"{name}.png", "source": f"skimage.data.{name}()", "height": img.height})
        record[-1]["width"] = img.width
    # a damaged file, as real folders hold: a JPEG whose scan data stops half-way (its header is whole)
    buf = os.path.join(folder, "coffee_truncated.jpg")
    PIL.Image.fromarray(skimage.data.coffee()).save(buf, quality=90)
    with open(buf, "rb") as f:
        data = f.read()
    with open(buf, "wb") as f:
        f.write(data[: len(data) // 2])
    record.append({"file": "coffee_truncated.jpg", "source": "skimage.data.coffee(), JPEG q90, first half"})
    for r in record:
        with open(os.path.join(folder, r["file"]), "rb") as f:
            r["sha256"] = hashlib.sha256(f.read()).hexdigest()
    return [{"skimage": skimage.__version__}, *record]


def _tiny_checkpoint(folder: str) -> None:
    """A random SigLIP2 (32 wide, 2 layers, patch 4, 16 positions) with its preprocessor_config.json."""
    import torch

    from siglip2.models.configuration import Siglip2Config
    from siglip2.reference import Siglip2Model

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    cfg = Siglip2Config(
        vision_config=dict(small, patch_size=4, num_patches=16),
        text_config=dict(small, vocab_size=256, max_position_embeddings=16),
    )
    Siglip2Model(cfg).save_pretrained(folder)
    pre = {
        "image_processor_type": "Siglip2ImageProcessorFast",
        "processor_class": "Siglip2Processor",
        "do_resize": True,
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
        "patch_size": 4,
        "max_num_patches": 16,
    }
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=1)


def naflex(out: str = NAFLEX_OUT) -> int:
    """Build the photo set and the checkpoint in a scratch folder, run each example there, keep its outputs."""
    out = os.path.join(ROOT, out)
    with tempfile.TemporaryDirectory() as work:
        record = _photos(os.path.join(work, "photos"))
        _tiny_checkpoint(os.path.join(work, "tiny-ckpt"))
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.makedirs(out)
        with open(os.path.join(out, "photos.json"), "w") as f:
            json.dump(record, f, indent=1)
        for name, args in NAFLEX_EXAMPLES:
            argv = ["siglip2", "profile", *args, "--json", f"{name}/profile.json", "--plots", f"{name}/"]
            print("$ " + " ".join(argv), flush=True)
            cmd = [sys.executable, "-m", "siglip2", *argv[1:], "--no-progress"]
            r = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stdout + r.stderr, file=sys.stderr)
                return r.returncode
            shutil.copytree(os.path.join(work, name), os.path.join(out, name))
            with open(os.path.join(out, name, "stdout.txt"), "w") as f:
                f.write(r.stdout)
            with open(os.path.join(out, name, "command.txt"), "w") as f:
                f.write(" ".join(argv) + "\n")
            print(r.stdout, flush=True)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(
            f"# docs/naflex.md's worked examples\n\nBuilt by `python bench/update_docs.py naflex` on "
            f"{datetime.date.today().isoformat()}. The photos are not kept here (photos.json lists each one's "
            f"scikit-image source, size and sha256: the script rebuilds them byte for byte with that scikit-image "
            f"and Pillow); each example folder holds its command line (command.txt), stdout, JSON and PNGs.\n"
        )
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=["blocks", "naflex"], default="blocks")
    p.add_argument("--check", action="store_true", help="compare only: exit 1 on any difference")
    args = p.parse_args(argv)
    if args.what == "naflex":
        if args.check:
            p.error("--check compares the blocks; 'naflex' rebuilds the examples")
        rc = naflex()
        if rc:
            return rc
    problems = [x for doc in DOCS for x in refresh(doc, args.check)]
    for x in problems:
        print(x, file=sys.stderr)
    if args.check:
        return 1 if problems else 0
    print(f"refreshed the generated blocks of {', '.join(DOCS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

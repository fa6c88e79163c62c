"""The figures in README.md and docs/ come from committed results folders; this script writes them there.

    python bench/update_docs.py            # refresh every generated block of README.md and docs/*.md
    python bench/update_docs.py --check    # exit 1 when a block differs from its source, or a linked image is gone
    python bench/update_docs.py naflex     # rebuild docs/naflex.md's worked examples into bench/results/naflex-docs/
    python bench/update_docs.py record NAME -- python bench/bench_data.py decode   # any command, into a new
                                           # bench/results/NAME-<date>-<time>-<commit>/

A generated block names its source in an HTML comment, which Markdown does not render:

    <!-- include bench/results/<run>/results.md -->      the file's body (its title line dropped, headings demoted
    ...                                                  two levels): a bench/run.py run's provenance and tables
    <!-- end include -->

    <!-- include bench/results/naflex-docs/timed/stdout.txt text -->    the file in a fenced block, as printed
    <!-- include bench/results/<run>/results.md cols=case,ms,ms_q1,ms_q3 -->   its tables cut to these columns

To show a new run, point the comment at its folder and rerun the script: nothing in a block is typed by hand, and
`--check` (tests/test_docs_generated.py, in CI) fails when someone does. Images are linked to the same folders
(`![..](../bench/results/<run>/x.png)`); `--check` also fails on a link to a file that is not there.

`record` runs a benchmark command and keeps what it printed: command.txt, stdout.txt, provenance.json (versions,
device, threads, load average, commit) and results.md, where every stdout line that is a JSON object becomes a row
of one table (a line with versions but no row key is the provenance) and any other output follows verbatim.

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
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [
    "README.md",
    *sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")),
]
# a block's body never holds another include: a missing end marker is an error, never a swallowed block
BLOCK = re.compile(
    r"(<!-- include (\S+)(?: (text))?(?: cols=(\S+))? -->\n)((?:(?!<!-- include ).)*?)(<!-- end include -->)", re.S
)
HEADER = re.compile(r"^<!-- include .*$", re.M)
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
    ("default", ["--device", "cpu"]),
    ("timed", ["photos/", "--config", "tiny", "--batch-size", "8", "--timing", "--device", "cpu"]),
    ("drift", ["photos/", "--model", "tiny-ckpt/", "--no-timing", "--device", "cpu"]),
)
NAFLEX_THREADS = "2"  # torch threads of every example (OMP_NUM_THREADS): the page's figures name it


def _provenance_line(bullets: dict) -> str:
    """A results file's "- key: value" lines as one: the command, when and where, versions, then the rest."""
    b = dict(bullets)
    head = [f"`{b.pop('command').strip('`')}`" if "command" in b else None]
    head.append(" ".join(filter(None, (b.pop("date", None), b.pop("time", None)))))
    head.append(b.pop("device", None))
    head.append(", ".join(f"{k} {b.pop(k)}" for k in ("torch", "triton", "transformers", "siglip2") if k in b))
    head.append(f"commit {b.pop('commit')}" if "commit" in b else None)
    return "Run: " + "; ".join(filter(None, head + [f"{k}: {v}" for k, v in b.items()])) + "."


def _select(lines: list[str], cols: list[str], source: str) -> list[str]:
    """The Markdown tables among `lines` cut to `cols` (in that order), the provenance lines folded into one, and
    the "Other output" section dropped."""
    out, keep, bullets = [], None, {}
    for ln in lines:
        if ln.startswith("Other output:"):
            break
        if ln.startswith("- ") and ": " in ln:
            k, v = ln[2:].split(": ", 1)
            bullets[k] = v
            continue
        if bullets:
            out.append(_provenance_line(bullets))
            bullets = {}
        if not ln.startswith("|"):
            keep = None
            out.append(ln)
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip()[1:-1])]
        if keep is None:  # a table's header row
            missing = [c for c in cols if c not in cells]
            if missing:
                raise ValueError(f"include {source}: no column {', '.join(missing)} (has {', '.join(cells)})")
            keep = [cells.index(c) for c in cols]
        out.append("| " + " | ".join(cells[i] for i in keep) + " |")
    if bullets:  # provenance with no table after it
        out.append(_provenance_line(bullets))
    return out


def render(source: str, mode: str | None, cols: str | None = None) -> str:
    """The block text for one include: a file's body (title dropped, headings demoted two levels; with `cols`,
    its tables cut to those columns) or, with mode "text", the file in a fenced block."""
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
    if cols:
        lines = _select(lines, cols.split(","), source)
    out, fenced = [], False
    for ln in lines:  # headings demoted; a fenced block (a command's verbatim output) left as it is
        fenced ^= ln.startswith("```")
        out.append("##" + ln if ln.startswith("#") and not fenced else ln)
    return "\n".join(out).strip("\n") + "\n"


def refresh(doc: str, check: bool) -> list[str]:
    """Rewrite (or, with check, compare) the generated blocks of one Markdown file; the problems found."""
    path = os.path.join(ROOT, doc)
    with open(path) as f:
        text = f.read()
    problems = []

    def sub(m: re.Match) -> str:
        new = render(m.group(2), m.group(3), m.group(4))
        if check and new != m.group(5):
            problems.append(f"{doc}: the block from {m.group(2)} differs from its source")
        return m.group(1) + new + m.group(6)

    new_text = BLOCK.sub(sub, text)
    starts = {m.start() for m in BLOCK.finditer(text)}
    for h in HEADER.finditer(text):  # an include the pattern does not take would be left unchecked
        if h.start() not in starts:
            line = h.group(0)
            raise ValueError(f"{doc}: {line!r} is not a complete include block (syntax: see bench/update_docs.py)")
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
    import PIL
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
    return [{"skimage": skimage.__version__, "pillow": PIL.__version__}, *record]


def _tiny_checkpoint(folder: str) -> None:
    """A random SigLIP2 (32 wide, 2 layers, patch 4, 16 positions) with its preprocessor_config.json."""
    import torch

    from siglip2.models.configuration import Siglip2Config
    from siglip2.processing.image_processing import Siglip2ImageProcessor
    from siglip2.reference import Siglip2Model

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    cfg = Siglip2Config(
        vision_config=dict(small, patch_size=4, num_patches=16),
        text_config=dict(small, vocab_size=256, max_position_embeddings=16),
    )
    Siglip2Model(cfg).save_pretrained(folder)
    Siglip2ImageProcessor(patch_size=4, max_num_patches=16).save_pretrained(folder)


def naflex(out: str = NAFLEX_OUT) -> int:
    """Build the photo set and the checkpoint in a scratch folder, run each example there, keep its outputs."""
    final = os.path.join(ROOT, out)
    out = final + ".new"  # built beside the committed folder, swapped in only when every example ran
    if os.path.isdir(out):
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as work:
        record = _photos(os.path.join(work, "photos"))
        _tiny_checkpoint(os.path.join(work, "tiny-ckpt"))
        os.makedirs(out)
        with open(os.path.join(out, "photos.json"), "w") as f:
            json.dump(record, f, indent=1)
        for name, args in NAFLEX_EXAMPLES:
            argv = ["siglip2", "profile", *args, "--json", f"{name}/profile.json", "--plots", f"{name}/"]
            print("$ " + " ".join(argv), flush=True)
            cmd = [sys.executable, "-m", "siglip2", *argv[1:], "--no-progress"]
            env = dict(os.environ, OMP_NUM_THREADS=NAFLEX_THREADS)
            r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env)
            if r.returncode != 0:
                print(r.stdout + r.stderr, file=sys.stderr)
                shutil.rmtree(out)
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
            f"and Pillow); each example folder holds its command line (command.txt), stdout, JSON and PNGs. Every "
            f"example ran on CPU with OMP_NUM_THREADS={NAFLEX_THREADS}.\n"
        )
    if os.path.isdir(final):
        shutil.rmtree(final)
    os.rename(out, final)
    return 0


ROW_KEYS = ("case", "provider", "stage", "phase", "run", "size")


def _cell(v) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # nan, inf: said as they are
    if isinstance(v, str):
        return v.replace("|", "\\|")
    if isinstance(v, float):
        near = round(v)
        # 0.99998 is not 1: keep the digits that tell them apart
        return f"{v:.4g}" if v == near or abs(v - near) >= 1e-3 else f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def results_md(stdout: str, command: str, env: dict) -> str:
    """results.md of a recorded command: provenance, one table of its JSON-object lines, the rest verbatim."""
    rows, other, header = [], [], {}
    for line in stdout.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and not any(k in obj for k in ROW_KEYS) and "torch" in obj:
            header.update(obj)
        elif isinstance(obj, dict):
            rows.append(obj)
        elif line.strip():
            other.append(line)
    out = ["# Benchmark results", "", f"- command: `{command}`"]
    out += [f"- {k}: {v}" for k, v in env.items() if k != "command"]
    # what the command printed about itself (its own thread count, say): beside the recorder's where both name it
    own = {k: v for k, v in header.items() if env.get(k) != v}
    out += [f"- {k}" + (" (the command's own)" if k in env else "") + f": {v}" for k, v in own.items()]
    if rows:
        # a row repeating the recorder's provenance adds nothing; where it differs (its own thread count) it stays
        cols = list(dict.fromkeys(k for r in rows for k in r if k in ROW_KEYS or env.get(k, object()) != r[k]))
        # a column with one value in every row is said once, above the table
        same = [c for c in cols if c not in ROW_KEYS and len(rows) > 1 and len({_cell(r.get(c)) for r in rows}) == 1]
        out += [f"- {c} (every row): {_cell(rows[0].get(c))}" for c in same]
        cols = [c for c in cols if c not in same]
        out += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    if other:
        out += ["", "Other output:", "", "```", *other, "```"]
    return "\n".join(out) + "\n"


def record(name: str, cmd: list[str]) -> int:
    """Run `cmd` from the repository root (stderr passes through: progress), keep its outputs in a new folder."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise SystemExit(f"record: NAME must be letters, digits, '.', '_' or '-', got {name!r}")
    if not cmd:
        raise SystemExit("record: give the command after --, e.g. record data -- python bench/bench_data.py decode")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common
    from run import provenance, run_folder

    if os.path.basename(cmd[0]) in ("python", "python3"):
        cmd = [sys.executable, *cmd[1:]]  # the interpreter whose versions the provenance records
    env = common.environment()
    env.update(provenance(cmd))
    shown = ["python", *cmd[1:]] if cmd[0] == sys.executable else cmd  # as typed, not the venv's full path
    env["command"] = " ".join(shlex.quote(c) for c in shown)
    # the thread count is the command's own (benchmarks set theirs): the recorder's would mislead
    env.pop("torch_threads", None)
    env["device"] = re.sub(r", \d+ threads\)$", ")", env["device"])
    folder = run_folder(env, kind=name)
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    print(r.stdout, end="")
    if r.returncode != 0:
        print(f"record: {' '.join(cmd)} exited {r.returncode}; nothing kept", file=sys.stderr)
        return r.returncode
    files = [("command.txt", env["command"] + "\n"), ("stdout.txt", r.stdout)]
    files.append(("provenance.json", json.dumps(env, indent=1, default=str) + "\n"))
    try:
        files.append(("results.md", results_md(r.stdout, env["command"], env)))
    except Exception as e:  # the run's own output is kept whatever its table makes of it
        print(f"record: results.md not written ({type(e).__name__}: {e})", file=sys.stderr)
    os.makedirs(folder)
    for fname, text in files:
        with open(os.path.join(folder, fname), "w") as f:
            f.write(text)
    print(f"wrote {os.path.relpath(folder, ROOT)}/")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["record"]:
        rest = argv[1:]
        if len(rest) < 1 or "--" not in rest:
            p.error("usage: update_docs.py record NAME -- COMMAND ...")
        i = rest.index("--")
        if i != 1:
            p.error("usage: update_docs.py record NAME -- COMMAND ...")
        return record(rest[0], rest[2:])
    p.add_argument("what", nargs="?", choices=["blocks", "naflex", "record"], default="blocks")
    p.add_argument("--check", action="store_true", help="compare only: exit 1 on any difference")
    args = p.parse_args(argv)
    if args.what == "naflex":
        if args.check:
            p.error("--check compares the blocks; 'naflex' rebuilds the examples")
        rc = naflex()
        if rc:
            return rc
    try:
        problems = [x for doc in DOCS for x in refresh(doc, args.check)]
    except (OSError, ValueError) as e:  # a block naming a file or a column that is not there
        print(f"update_docs: {e}", file=sys.stderr)
        return 1
    for x in problems:
        print(x, file=sys.stderr)
    if args.check:
        return 1 if problems else 0
    print(f"refreshed the generated blocks of {', '.join(DOCS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

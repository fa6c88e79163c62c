"""A synthetic captioned-shapes dataset drawn with PIL ("a red circle", "a blue square", ...) for training tests
and the training benchmark: images of varied size and aspect ratio, one coloured shape on a noisy background."""

import csv
import os
import random

COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("circle", "square", "triangle")
CLASSES = [f"a {c} {s}" for c in COLORS for s in SHAPES]


def draw(label: str, rng: random.Random):
    from PIL import Image, ImageDraw

    _, color, shape = label.split()
    w, h = rng.choice([(32, 32), (48, 32), (32, 48), (40, 40)])
    bg = tuple(rng.randint(90, 160) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    s = rng.randint(int(0.45 * min(w, h)), int(0.8 * min(w, h)))
    x0, y0 = rng.randint(0, w - s), rng.randint(0, h - s)
    fill = tuple(max(0, min(255, v + rng.randint(-20, 20))) for v in COLORS[color])
    if shape == "circle":
        d.ellipse([x0, y0, x0 + s, y0 + s], fill=fill)
    elif shape == "square":
        d.rectangle([x0, y0, x0 + s, y0 + s], fill=fill)
    else:
        d.polygon([(x0 + s / 2, y0), (x0, y0 + s), (x0 + s, y0 + s)], fill=fill)
    return img


def make_dataset(root: str, n: int, seed: int = 0, name: str = "train") -> str:
    """Write n PNGs + `<name>.csv` (image, caption) under root; returns the CSV path."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(root, name), exist_ok=True)
    rows = []
    for i in range(n):
        label = CLASSES[i % len(CLASSES)]
        path = f"{name}/{i:05d}.png"
        draw(label, rng).save(os.path.join(root, path))
        rows.append({"image": path, "caption": label})
    table = os.path.join(root, f"{name}.csv")
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "caption"])
        w.writeheader()
        w.writerows(rows)
    return table

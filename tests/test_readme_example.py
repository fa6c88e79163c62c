"""The README's quick example runs as written (on a tiny local checkpoint with 4-pixel patches instead of the hub
id, on CPU), runs the Triton kernels (through the interpreter), and ranks the labels as the reference model does."""

import torch
from launches import count_triton_launches
from PIL import Image
from test_pipeline_cli import (
    assert_fast_path_ran,
    checkpoint,  # noqa: F401  (module fixture: a tiny local checkpoint + tokenizer)
)


def test_readme_quick_example(checkpoint, tmp_path):  # noqa: F811
    from siglip2 import Siglip2Processor, zero_shot_classify
    from siglip2.fast import Siglip2Model

    ckpt = checkpoint[0]
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "cat.jpg")
    model = Siglip2Model.from_pretrained(ckpt, dtype=torch.float32, device="cpu")
    processor = Siglip2Processor.from_pretrained(ckpt)
    # patch_size=4: the tiny checkpoint's patch (the processor's default, 16, is the released checkpoints')
    inputs = processor(
        images=[Image.open(tmp_path / "cat.jpg")],
        text=["a photo of a cat", "a photo of a dog"],
        max_num_patches=16,
        patch_size=4,
        return_tensors="pt",
    ).to("cpu")
    with count_triton_launches() as launches:
        out = model(**inputs)
    assert_fast_path_ran(launches)
    probs = torch.sigmoid(out.logits_per_image)
    assert probs.shape == (1, 2) and torch.isfinite(probs).all()
    with count_triton_launches() as launches:
        res = zero_shot_classify([str(tmp_path / "cat.jpg")], ["cat", "dog"], model=ckpt)
    assert_fast_path_ran(launches)
    # the expected order, from the reference model on the pipeline's own prompts
    from siglip2.pipeline import DEFAULT_TEMPLATE
    from siglip2.reference import Siglip2Model as Reference

    reference = Reference.from_pretrained(ckpt, dtype=torch.float32, device="cpu")
    prompts = [DEFAULT_TEMPLATE.format(label) for label in ("cat", "dog")]
    check = processor(
        images=[Image.open(tmp_path / "cat.jpg")], text=prompts, max_num_patches=16, patch_size=4, return_tensors="pt"
    )
    with torch.no_grad():
        scores = torch.sigmoid(reference(**check).logits_per_image)[0]
    want = ["cat", "dog"] if scores[0] >= scores[1] else ["dog", "cat"]
    assert [r["label"] for r in res[0]] == want
    assert abs(res[0][0]["score"] - scores.max().item()) < 1e-5

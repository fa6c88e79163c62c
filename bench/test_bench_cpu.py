"""pytest-benchmark cases for the CPU paths: the NaFlex processor, the vision tower (padded reference and packed on the
kernels' PyTorch reference ops), and the sigmoid loss (forward + backward).

    pytest bench --benchmark-only                 # from the repo root; not part of the README's test command
    pytest bench --benchmark-only --benchmark-json out.json

pytest-benchmark does the timing and the statistics (min / median / mean over its calibrated rounds). These
cases catch CPU regressions between commits on the same machine; they say nothing about GPU speed
(bench/run.py is the GPU benchmark). Each case checks its output once so that a broken path cannot look fast.
"""

import math

import numpy as np
import pytest
import torch

SIZES = [(480, 640), (640, 480), (1080, 1920), (512, 512), (300, 1000), (2000, 1500), (224, 224), (768, 1024)]
TOWER = dict(
    hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, patch_size=16, num_patches=256
)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


@pytest.mark.parametrize("backend", ["pil", "torch"])
@pytest.mark.parametrize("max_num_patches", [256, 1024])
def test_processor(benchmark, images, backend, max_num_patches):
    from siglip2.processing.image_processing import Siglip2ImageProcessor

    proc = Siglip2ImageProcessor(backend=backend)
    inputs = images if backend == "pil" else [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in images]
    out = benchmark(proc, inputs, max_num_patches=max_num_patches)
    assert out["pixel_values"].shape == (len(images), max_num_patches, 768)
    assert (out["spatial_shapes"].prod(-1) <= max_num_patches).all()
    benchmark.extra_info["images"] = len(images)


def _naflex_batch(B, M, seed=0):
    from siglip2.processing.image_utils import get_image_size_for_max_num_patches

    P, K = TOWER["patch_size"], 3 * TOWER["patch_size"] ** 2
    g = torch.Generator().manual_seed(seed)
    shapes = [tuple(s // P for s in get_image_size_for_max_num_patches(*SIZES[i % len(SIZES)], P, M)) for i in range(B)]
    pv, mask = torch.zeros(B, M, K), torch.zeros(B, M, dtype=torch.int32)
    for i, (h, w) in enumerate(shapes):
        pv[i, : h * w] = torch.randn(h * w, K, generator=g)
        mask[i, : h * w] = 1
    return pv, mask, torch.tensor(shapes)


@pytest.mark.parametrize("impl", ["reference", "packed"])
@pytest.mark.parametrize("max_num_patches", [256, 576])
def test_vision_tower(benchmark, impl, max_num_patches):
    """The padded reference impl vs the packed path (siglip2.fast's layout) on the kernels' reference ops."""
    from siglip2.reference import Siglip2VisionModel

    torch.manual_seed(0)
    model = Siglip2VisionModel(TOWER).eval()
    if impl == "packed":
        model.set_impl("triton", kernel_impl="reference")
    pv, mask, ss = _naflex_batch(8, max_num_patches)

    def fwd():
        with torch.no_grad():
            return model(pixel_values=pv, pixel_attention_mask=mask, spatial_shapes=ss).pooler_output

    out = benchmark(fwd)
    assert out.shape == (8, TOWER["hidden_size"]) and torch.isfinite(out).all()
    benchmark.extra_info["tokens"] = int(mask.sum())


@pytest.mark.parametrize("n, d", [(256, 128), (1024, 256)])
def test_sigmoid_loss(benchmark, n, d):
    """siglip2.kernels.sigmoid_loss(impl="reference"), forward + backward through all four inputs."""
    from siglip2.kernels import sigmoid_loss

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    scale = torch.tensor([math.log(10.0)], requires_grad=True)
    bias = torch.tensor([-10.0], requires_grad=True)

    def step():
        loss = sigmoid_loss(img, txt, scale, bias, impl="reference")
        return loss, torch.autograd.grad(loss, (img, txt, scale, bias))

    loss, grads = benchmark(step)
    assert torch.isfinite(loss) and all(torch.isfinite(t).all() for t in grads)

"""Image processor parity with transformers' PIL processors, and the torch path against the PIL path.

Run: `pytest tests/test_processing.py` (~15 s on 2 CPU cores). Real photos come from scikit-image's data
module; the tolerance is 1e-5 (observed: bit-identical). The torch path reproduces Pillow's fixed-point
resampling and pass order, so it is held to the same 1e-5. GPU tests (marked `gpu`) run it on CUDA.
"""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from siglip2.processing.image_processing import (
    Siglip2ImageProcessor,
    SiglipImageProcessor,
    image_processor_from_pretrained,
)
from siglip2.processing.image_utils import get_image_size_for_max_num_patches, resize_uint8

TOL = 1e-5
PHOTOS = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "page",
    "text",
    "retina",
    "camera",
    "coins",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "cat",
    "logo",
]


def _photos():
    import skimage.data

    out = []
    for name in PHOTOS:
        try:
            a = getattr(skimage.data, name)()
        except Exception:  # an image missing from this scikit-image version, or needing pooch downloads
            continue
        out.append((name, PIL.Image.fromarray(a if a.dtype != bool else a.astype(np.uint8) * 255)))
    assert len(out) >= 7
    return out


def _hf(**kw):
    from transformers import Siglip2ImageProcessorPil

    return Siglip2ImageProcessorPil(**kw)


def _assert_same(a, b, tol=TOL):
    for k in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (
            k,
            a[k].dtype,
            b[k].dtype,
            a[k].shape,
            b[k].shape,
        )
    assert torch.equal(a["pixel_attention_mask"], b["pixel_attention_mask"])
    assert torch.equal(a["spatial_shapes"], b["spatial_shapes"])
    err = (a["pixel_values"] - b["pixel_values"]).abs().max().item()
    assert err <= tol, f"max |diff| {err:.3g}"


@pytest.mark.parametrize("max_num_patches", [64, 256, 1024])
def test_real_photos_match_transformers(max_num_patches):
    photos = _photos()
    images = [p for _, p in photos]
    ref = _hf()(images, max_num_patches=max_num_patches, return_tensors="pt", do_convert_rgb=True)
    ours = Siglip2ImageProcessor()(images, max_num_patches=max_num_patches)
    _assert_same(ours, ref)
    torch_path = Siglip2ImageProcessor(backend="torch")(images, max_num_patches=max_num_patches)
    _assert_same(torch_path, ours)


@pytest.mark.parametrize("hw", [(1, 1), (3, 2000), (2000, 3), (7, 5), (1, 300), (17, 1)])
def test_synthetic_extremes(hw):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    ref = _hf()(PIL.Image.fromarray(a), return_tensors="pt")
    ours = Siglip2ImageProcessor()(a)
    _assert_same(ours, ref)
    _assert_same(Siglip2ImageProcessor(backend="torch")(torch.from_numpy(a).permute(2, 0, 1)), ours)
    h, w = ours["spatial_shapes"][0].tolist()
    assert h * w <= 256 and (ours["pixel_values"][0, h * w :] == 0).all()
    if hw == (1, 1):
        assert (h, w) == (7, 7)  # the 100x upscaling cap


def test_modes_converted_like_transformers():
    """RGBA/LA/transparent palettes composite onto white, gray/CMYK convert, as do_convert_rgb=True."""
    rng = np.random.default_rng(2)
    rgba = PIL.Image.fromarray(rng.integers(0, 256, (40, 70, 4), dtype=np.uint8), "RGBA")
    pal = rgba.convert("RGB").convert("P", palette=PIL.Image.ADAPTIVE)
    pal.info["transparency"] = 3
    imgs = [rgba, rgba.convert("L"), rgba.convert("LA"), rgba.convert("CMYK"), pal, rgba.convert("1")]
    ref = _hf()(imgs, return_tensors="pt", do_convert_rgb=True)
    _assert_same(Siglip2ImageProcessor()(imgs), ref)
    # numpy RGBA uses transformers' numpy compositing (float64, rounded)
    arr = np.asarray(rgba)
    _assert_same(Siglip2ImageProcessor()(arr), _hf()(arr, return_tensors="pt", do_convert_rgb=True))
    _assert_same(
        Siglip2ImageProcessor(backend="torch")(torch.from_numpy(arr.copy()).permute(2, 0, 1)),
        Siglip2ImageProcessor()(arr),
    )


def test_gray_16bit_float_and_tensor_inputs_agree():
    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, (50, 33, 3), dtype=np.uint8)
    base = Siglip2ImageProcessor()(u8, max_num_patches=64)
    variants = [
        u8.astype(np.uint16) * 257,
        u8.astype(np.float32) / 255,
        u8.astype(np.float64) / 255,
        torch.from_numpy(u8).permute(2, 0, 1),
        torch.from_numpy(u8).permute(2, 0, 1).float() / 255,
        torch.from_numpy(u8.astype(np.int32) * 257).permute(2, 0, 1),
    ]
    for v in variants:
        _assert_same(Siglip2ImageProcessor()(v, max_num_patches=64), base)
        _assert_same(Siglip2ImageProcessor(backend="torch")(v, max_num_patches=64), base)
    gray = u8[..., 0]
    ref = _hf()(PIL.Image.fromarray(gray), return_tensors="pt", do_convert_rgb=True, max_num_patches=64)
    for v in (
        gray,
        PIL.Image.fromarray(gray),
        PIL.Image.fromarray(gray.astype(np.uint16) * 257),
        gray[..., None],
        torch.from_numpy(gray),
    ):
        _assert_same(Siglip2ImageProcessor()(v, max_num_patches=64), ref)


def test_batch_shapes_np_and_paths(tmp_path):
    rng = np.random.default_rng(4)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(480, 640), (640, 480), (37, 37)]]
    out = Siglip2ImageProcessor()(imgs, return_tensors="np")
    assert out["pixel_values"].shape == (3, 256, 768) and out["pixel_values"].dtype == np.float32
    assert out["pixel_attention_mask"].dtype == np.int32 and out["spatial_shapes"].dtype == np.int64
    assert out["spatial_shapes"].tolist() == [[14, 18], [18, 14], [16, 16]]
    path = tmp_path / "x.png"
    PIL.Image.fromarray(imgs[2]).save(path)
    _assert_same(Siglip2ImageProcessor()(str(path)), Siglip2ImageProcessor()(imgs[2]))
    batched = Siglip2ImageProcessor(backend="torch")(torch.from_numpy(np.stack(imgs[:1] * 2)).permute(0, 3, 1, 2))
    _assert_same(batched, Siglip2ImageProcessor()(imgs[:1] * 2))


@pytest.mark.parametrize(
    "hw, M, expected",
    [
        ((480, 640), 256, (224, 288)),
        ((480, 640), 1024, (432, 576)),
        ((224, 224), 256, (256, 256)),
        ((224, 1024), 256, (112, 512)),
        ((224, 1024), 1024, (240, 1088)),
        ((1080, 1920), 256, (192, 336)),
        ((100, 3000), 256, (48, 1360)),
        ((1, 1), 256, (112, 112)),
        ((10, 10000), 256, (16, 4096)),
        ((10, 10000), 1024, (16, 16000)),
    ],
)
def test_target_size_worked_examples(hw, M, expected):
    from transformers.models.siglip2.image_processing_pil_siglip2 import (
        get_image_size_for_max_num_patches as hf,
    )

    assert get_image_size_for_max_num_patches(*hw, 16, M) == expected == hf(*hw, 16, M)


def test_errors(tmp_path, monkeypatch):
    p = Siglip2ImageProcessor()
    with pytest.raises(ValueError, match=r"images\[0\]: zero-size"):
        p(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match=r"images\[1\].*channels, got 5"):
        p([np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5, 5), np.uint8)])
    with pytest.raises(ValueError, match="zero-size"):
        p(torch.zeros(3, 4, 0, dtype=torch.uint8))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot decode"):
        p(str(bad))
    with pytest.raises(FileNotFoundError, match="no such file"):
        p(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        p(np.full((4, 4, 3), 3.5, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        p(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(TypeError, match="expected a path"):
        p(12)
    with pytest.raises(ValueError, match="return_tensors"):
        p(np.zeros((5, 5, 3), np.uint8), return_tensors="tf")
    with pytest.raises(ValueError, match="backend"):
        Siglip2ImageProcessor(backend="cv2")
    big = tmp_path / "bomb.png"
    PIL.Image.new("L", (200, 200)).save(big)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # 40000 px > 2 x limit: PIL refuses it
    with pytest.raises(PIL.Image.DecompressionBombError, match="refused"):
        p(str(big))


def test_save_and_load_roundtrip(tmp_path):
    from transformers import Siglip2ImageProcessorPil

    p = Siglip2ImageProcessor(patch_size=8, max_num_patches=100, image_mean=[0.4, 0.5, 0.6])
    p.save_pretrained(tmp_path)
    assert not [f for f in tmp_path.iterdir() if ".tmp" in f.name]
    q = Siglip2ImageProcessor.from_pretrained(tmp_path)
    assert (q.patch_size, q.max_num_patches, q.image_mean) == (8, 100, [0.4, 0.5, 0.6])
    assert isinstance(image_processor_from_pretrained(tmp_path), Siglip2ImageProcessor)
    hf = Siglip2ImageProcessorPil.from_pretrained(tmp_path)
    img = np.random.default_rng(5).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    _assert_same(q(img), hf(img, return_tensors="pt"))
    (tmp_path / "preprocessor_config.json").write_text("{broken")
    from siglip2.checkpoints.loading import CheckpointError

    with pytest.raises(CheckpointError, match="not valid JSON"):
        Siglip2ImageProcessor.from_pretrained(tmp_path)


@pytest.mark.parametrize("size, resample", [({"height": 224, "width": 224}, 3), ({"height": 48, "width": 80}, 2)])
def test_fixres_matches_transformers(tmp_path, size, resample):
    from transformers import SiglipImageProcessorPil

    rng = np.random.default_rng(6)
    imgs = [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(300, 200), (20, 90)]]
    imgs.append(imgs[0].convert("L"))
    ref = SiglipImageProcessorPil(size=size, resample=resample, image_mean=[0.5] * 3, image_std=[0.5] * 3)(
        imgs, return_tensors="pt"
    )["pixel_values"]
    p = SiglipImageProcessor(size=size, resample=resample)
    ours = p(imgs)["pixel_values"]
    assert ours.shape == ref.shape == (3, 3, size["height"], size["width"])
    assert (ours - ref).abs().max().item() <= TOL
    assert (
        SiglipImageProcessor(size=size, resample=resample, backend="torch")(imgs)["pixel_values"] - ours
    ).abs().max() <= TOL
    p.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["size"] == size
    assert isinstance(image_processor_from_pretrained(tmp_path), SiglipImageProcessor)


@pytest.mark.parametrize("resample", [1, 2, 3, 4, 5])
def test_resize_uint8_is_pillow_exact(resample):
    rng = np.random.default_rng(resample)
    for _ in range(25):
        h, w = rng.integers(1, 120, 2)
        oh, ow = rng.integers(1, 160, 2)
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(PIL.Image.fromarray(a).resize((ow, oh), resample=resample))
        out = resize_uint8(torch.from_numpy(a).permute(2, 0, 1), (oh, ow), resample).permute(1, 2, 0).numpy()
        assert np.array_equal(ref, out), ((h, w), (oh, ow))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """patch size -> a tiny local NaFlex checkpoint (config.json, preprocessor_config.json with that patch size and
    16 patches, tokenizer files), as tests/tiny.py saves it."""
    from tiny import save_pipeline_checkpoint

    out = {}
    for P in (8, 14, 16):
        d = tmp_path_factory.mktemp(f"ckpt-p{P}")
        save_pipeline_checkpoint(d, patch=P)
        out[P] = d
    return out


def _rgb(h, w, seed):
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _hf_processor(d):
    from transformers import AutoTokenizer, Siglip2ImageProcessorPil
    from transformers import Siglip2Processor as HFProcessor

    ip = Siglip2ImageProcessorPil.from_pretrained(d)
    return HFProcessor(image_processor=ip, tokenizer=AutoTokenizer.from_pretrained(d))


@pytest.mark.parametrize("P", [8, 14, 16])
def test_combined_call_uses_the_checkpoint_patch_size(checkpoints, P):
    """processor(images=..., text=...) patchifies with the checkpoint's patch size, as transformers' image processor
    does. (transformers 5.24's combined call passes its class default patch_size=16 whatever the checkpoint: it
    matches ours only when told the patch size.)"""
    from siglip2.processing.processor import Siglip2Processor

    d = checkpoints[P]
    images, texts = [_rgb(37, 90, 0), _rgb(120, 64, 1)], ["A photo of a Cat.", "a dog"]
    ours, hf = Siglip2Processor.from_pretrained(d), _hf_processor(d)
    for kw in ({}, {"max_num_patches": 64}):
        a = ours(images=images, text=texts, **kw)
        M = kw.get("max_num_patches", 256)  # the combined call's default budget, as transformers'
        assert a["pixel_values"].shape == (2, M, 3 * P * P)
        _assert_same(a, hf.image_processor(images, max_num_patches=M, return_tensors="pt"))
        b = hf(images=images, text=texts, return_tensors="pt", patch_size=P, **kw)
        assert sorted(a.keys()) == sorted(b.keys())
        _assert_same(a, b)
        assert torch.equal(a["input_ids"], b["input_ids"])
        _assert_same(ours(images=images, **kw), a)  # images alone: the same


def test_explicit_patch_size_is_honoured_as_in_transformers(checkpoints):
    """A patch_size argument wins over the checkpoint's, as in transformers (the model then refuses the input)."""
    from siglip2.processing.processor import Siglip2Processor

    d = checkpoints[8]
    images = [_rgb(45, 61, 2)]
    a = Siglip2Processor.from_pretrained(d)(images=images, text=["a cat"], patch_size=4, max_num_patches=64)
    b = _hf_processor(d)(images=images, text=["a cat"], patch_size=4, max_num_patches=64, return_tensors="pt")
    assert a["pixel_values"].shape == (1, 64, 48)
    _assert_same(a, b)


def test_patch_size_comes_from_the_checkpoint_never_a_silent_16(checkpoints, tmp_path):
    """Every loader reads the checkpoint's patch size; a preprocessor_config without one gets config.json's (not the
    class default, 16), one that disagrees with config.json is refused unless patch_size= is passed."""
    import shutil

    from siglip2.checkpoints.loading import CheckpointError
    from siglip2.pipeline import embed
    from siglip2.processing.processor import Siglip2Processor

    loaders = (image_processor_from_pretrained, Siglip2ImageProcessor.from_pretrained)
    for P, d in checkpoints.items():
        assert [load(d).patch_size for load in loaders] == [P, P]
        assert Siglip2Processor.from_pretrained(d).image_processor.patch_size == P
    d = tmp_path / "ckpt"
    shutil.copytree(checkpoints[8], d)
    path = d / "preprocessor_config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in cfg.items() if k != "patch_size"}))
    assert [load(d).patch_size for load in loaders] == [8, 8]
    assert Siglip2Processor.from_pretrained(d).image_processor.patch_size == 8
    out = embed([_rgb(30, 40, 3)], ["a cat"], model=str(d))  # the pipeline: the model accepts what it gets
    assert out["image_embeds"].shape == (1, 32) and out["text_embeds"].shape == (1, 32)
    path.write_text(json.dumps(dict(cfg, patch_size=16)))
    for load in loaders:
        with pytest.raises(CheckpointError, match=r"patch_size 16 but config\.json's vision tower has patch_size 8"):
            load(d)
        assert load(d, patch_size=4).patch_size == 4
    with pytest.raises(CheckpointError, match="patch_size 16"):
        Siglip2Processor.from_pretrained(d)
    with pytest.raises(CheckpointError, match="patch_size 16"):
        embed([_rgb(30, 40, 3)], model=str(d))


@pytest.mark.gpu
@pytest.mark.parametrize("max_num_patches", [256, 1024])
def test_torch_path_on_cuda_matches_pil(max_num_patches):
    photos = [torch.from_numpy(np.asarray(p.convert("RGB"))).permute(2, 0, 1).cuda() for _, p in _photos()]
    out = Siglip2ImageProcessor(backend="torch")(photos, max_num_patches=max_num_patches)
    assert out["pixel_values"].is_cuda and out["spatial_shapes"].is_cuda
    ref = Siglip2ImageProcessor()([t.cpu() for t in photos], max_num_patches=max_num_patches)
    _assert_same(out.to("cpu"), ref)

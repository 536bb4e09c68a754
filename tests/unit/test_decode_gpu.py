"""The GPU decoder without a GPU: routing from the header, the limits, EXIF orientation and resizing on
tensors against Pillow, the batching thread and its per-image fallback, mixed batches, ``--decode``.

nvImageCodec itself needs a CUDA device even to start: tests/gpu/test_gpu_decode.py covers it on one.
"""

from __future__ import annotations

import io
import sys
import threading

import pytest
import torch
from PIL import Image, ImageOps

from worker.config import WorkerSettings, check_decode
from worker.decode import DecodeResult
from worker.decode.cpu import ImageError, Limits, Preprocess, decode, draft_scale, resize
from worker.decode.gpu import GpuDecoder
from worker.decode.header import Header, read_header
from worker.decode.pool import ThreadDecoder
from worker.decode.tensorprep import orient, prepare, reduce, resize_batch
from worker.infer import Predictor
from worker.model import load_model

from ..conftest import image_bytes

SPEC = Preprocess(size=(64, 48), resize="center_crop")
PHOTOS = ["cat.jpg", "coffee.jpg", "odd_panorama.jpg", "retina_large.jpg", "odd_exif_rotated.jpg"]


def jpeg(size: tuple[int, int] = (80, 60), **save: object) -> bytes:
    """A generated JPEG (gradient, so resizing shows)."""
    img = Image.linear_gradient("L").resize(size).convert(save.pop("mode", "RGB"))  # type: ignore[arg-type]
    buf = io.BytesIO()
    img.save(buf, "JPEG", **save)
    return buf.getvalue()


def as_tensor(img: Image.Image) -> torch.Tensor:
    return torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)


# -- routing and limits (the header, read without decoding) --------------------------------------


@pytest.mark.parametrize(
    "name, reason",
    [
        ("odd.webp", "format WEBP"),
        ("odd_rgba.png", "format PNG"),
        ("odd_animated.gif", "format GIF"),
        ("odd_cmyk.jpg", "mode CMYK"),
        ("odd_progressive.jpg", "progressive"),
    ],
)
def test_non_jpeg_cmyk_and_progressive_images_go_to_the_cpu(name, reason):
    assert read_header(image_bytes(name), Limits()).cpu_reason == reason


@pytest.mark.parametrize("name", ["cat.jpg", "odd_panorama.jpg", "retina_large.jpg", "odd_exif_rotated.jpg"])
def test_plain_jpegs_go_to_the_gpu_with_their_size_from_the_header(name):
    header = read_header(image_bytes(name), Limits())
    assert header.cpu_reason is None
    assert (header.width, header.height) == Image.open(io.BytesIO(image_bytes(name))).size


def test_grayscale_and_444_jpegs_go_to_the_gpu_and_odd_ones_do_not():
    assert read_header(jpeg(mode="L"), Limits()).cpu_reason is None
    assert read_header(jpeg(subsampling=0), Limits()).cpu_reason is None
    assert read_header(jpeg(progressive=True), Limits()).cpu_reason == "progressive"
    assert read_header(jpeg(mode="CMYK"), Limits()).cpu_reason == "mode CMYK"


def test_a_truncated_jpeg_goes_to_the_cpu_which_judges_it():
    data = image_bytes("cat.jpg")
    assert read_header(data[: len(data) // 2], Limits()).cpu_reason == "no end marker"
    with pytest.raises(ImageError):
        decode(data[: len(data) // 2], SPEC, Limits())


@pytest.mark.parametrize("data", [b"", b"not an image", b"\xff\xd8\xff\xe0garbage", image_bytes("cat.jpg")[:40]])
def test_corrupt_bytes_are_refused_with_the_cpu_decoders_error(data):
    with pytest.raises(ImageError) as gpu:
        read_header(data, Limits())
    with pytest.raises(ImageError) as cpu:
        decode(data, SPEC, Limits())
    assert gpu.value.kind == cpu.value.kind == "unsupported_image"


@pytest.mark.parametrize("over", ["bytes", "pixels"])
def test_byte_and_pixel_limits_are_the_cpu_decoders_read_from_the_header(over):
    data = jpeg((80, 60))
    assert read_header(data, Limits(max_bytes=len(data), max_pixels=80 * 60)).cpu_reason is None
    limits = Limits(max_bytes=len(data) - 1) if over == "bytes" else Limits(max_pixels=80 * 60 - 1)
    with pytest.raises(ImageError) as gpu:
        read_header(data, limits)
    with pytest.raises(ImageError) as cpu:
        decode(data, SPEC, limits)
    assert gpu.value.kind == cpu.value.kind == "image_too_large" and str(gpu.value) == str(cpu.value)


def test_a_decompression_bomb_is_refused_from_its_header(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own bomb guard, as on a huge image
    with pytest.raises(ImageError) as gpu:
        read_header(jpeg((80, 60)), Limits())
    assert gpu.value.kind == "image_too_large"


# -- EXIF orientation and resizing on tensors, against Pillow ------------------------------------------


@pytest.mark.parametrize("turn", range(1, 9))
def test_exif_orientation_on_a_tensor_matches_pillows_exif_transpose(turn):
    img = Image.effect_noise((7, 5), 80).convert("RGB")  # not square: width and height must swap right
    exif = Image.Exif()
    exif[0x0112] = turn
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif.tobytes())
    want = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())))
    assert torch.equal(orient(as_tensor(img), turn), as_tensor(want))


def test_the_header_reads_the_exif_orientation():
    assert read_header(image_bytes("odd_exif_rotated.jpg"), Limits()).orientation == 8
    assert read_header(image_bytes("cat.jpg"), Limits()).orientation == 1


@pytest.mark.parametrize(
    "spec",
    [SPEC, Preprocess(size=(224, 224)), Preprocess(size=(32, 32), resize="stretch")],
    ids=["center_crop-64x48", "center_crop-224", "stretch-32"],
)
def test_torch_resize_and_crop_match_pillows_within_one_level(spec):
    worst = 0
    for name in PHOTOS:
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes(name)))).convert("RGB")
        got = resize_batch(as_tensor(img)[None], spec)[0]
        want = as_tensor(resize(img, spec))
        worst = max(worst, (got.int() - want.int()).abs().max().item())
    print(f"max abs pixel difference, torch vs Pillow resize ({spec.size}, {spec.resize}): {worst}")
    assert worst <= 1


@pytest.mark.parametrize("spec", [SPEC, Preprocess(size=(224, 224))], ids=["64x48", "224"])
def test_full_decodes_prepared_like_the_gpu_are_close_to_the_cpu_decode(spec):
    # The CPU path decodes large JPEGs at 1/2..1/8 scale in the DCT (draft); the GPU path decodes in full and
    # averages blocks of the same size instead, then resizes alike.
    diffs = {}
    for name in PHOTOS:
        data = image_bytes(name)
        got = prepare([as_tensor(Image.open(io.BytesIO(data)))], [read_header(data, Limits())], spec)[0]
        want = torch.frombuffer(bytearray(decode(data, spec, Limits())), dtype=torch.uint8).view(*spec.size, 3)
        diffs[name] = round((got.float() - want.float()).abs().mean().item(), 2)
    print(f"mean abs pixel difference vs the CPU decode at {spec.size}:", diffs)
    assert max(diffs.values()) < 1.5


def test_the_draft_scale_is_pillows():
    for size in [(451, 300), (512, 512), (1600, 1067), (2400, 300), (4000, 3000)]:
        img = Image.open(io.BytesIO(jpeg(size)))
        img.draft("RGB", (256, 256))
        assert draft_scale(*size, Preprocess(size=(224, 224))) == img.decoderconfig[0], size


def test_block_means_stand_in_for_dct_scaling():
    data = jpeg((1600, 1200), quality=90)
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (256, 256))
    drafted = as_tensor(img)  # decoded by libjpeg at 1/4 scale
    reduced = reduce(as_tensor(Image.open(io.BytesIO(data)))[None], 4)[0]
    assert reduced.shape == drafted.shape and (reduced.float() - drafted.float()).abs().mean() < 1


def test_prepare_keeps_order_across_sizes_and_orientations():
    images = [torch.full((10 + i % 3, 20, 3), i, dtype=torch.uint8) for i in range(7)]
    headers = [Header("JPEG", 20, 10 + i % 3, "RGB", turn, None) for i, turn in enumerate([1, 6, 1, 8, 1, 3, 1])]
    out = prepare(images, headers, Preprocess(size=(4, 4), resize="stretch"))
    assert [int(t[0, 0, 0]) for t in out] == list(range(7))
    assert all(t.shape == (4, 4, 3) and t.is_contiguous() for t in out)


# -- the decoder thread, with a stand-in for nvImageCodec --------------------------------------------


class PillowBatch:
    """Stands in for nvImageCodec: full decode with Pillow to tensors; None for ``refuse``, raises on ``explode``."""

    def __init__(self, refuse: bytes = b"", explode: bool = False) -> None:
        self.refuse, self.explode, self.batches = refuse, explode, []

    def __call__(self, images, stream):
        self.batches.append(len(images))
        if self.explode:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return [None if data == self.refuse else as_tensor(Image.open(io.BytesIO(data))) for data in images]


def collect(decoder, images: list[bytes]) -> list[DecodeResult]:
    results: dict[int, DecodeResult] = {}
    all_done = threading.Event()

    def on_done(i: int, result: DecodeResult) -> None:
        results[i] = result
        if len(results) == len(images):
            all_done.set()

    for i, data in enumerate(images):
        decoder.submit(data, lambda r, i=i: on_done(i, r))
    assert all_done.wait(30)
    decoder.close()
    return [results[i] for i in range(len(images))]


def gpu_decoder(batch, limits: Limits = Limits(), max_batch: int = 64) -> GpuDecoder:  # noqa: B008
    return GpuDecoder(SPEC, limits, ThreadDecoder(SPEC, limits, 2), batch, "cpu", max_batch=max_batch)


def test_jpegs_are_decoded_in_batches_and_the_rest_by_pillow_image_by_image():
    names = ["cat.jpg", "odd.webp", "coffee.jpg", "odd_cmyk.jpg", "odd_exif_rotated.jpg", "odd_progressive.jpg"]
    batch = PillowBatch()
    decoder = gpu_decoder(batch)
    results = collect(decoder, [image_bytes(n) for n in names] + [b"junk"])
    for name, result in zip(names, results, strict=False):
        assert result.error is None, name
        if name.endswith(".jpg") and read_header(image_bytes(name), Limits()).cpu_reason is None:
            assert isinstance(result.pixels, torch.Tensor) and result.pixels.shape == (64, 48, 3)
        else:
            assert result.pixels == decode(image_bytes(name), SPEC, Limits())
    assert results[-1].error.kind == "unsupported_image"
    assert decoder.routes["gpu"] == 3 and decoder.routes["refused"] == 1 and sum(batch.batches) == 3
    assert decoder.routes["cpu: format WEBP"] == decoder.routes["cpu: mode CMYK"] == 1


def test_a_jpeg_smaller_than_the_model_input_is_decoded_at_full_size_and_scaled_up():
    results = collect(gpu_decoder(PillowBatch()), [jpeg((20, 12)), jpeg((1, 1))])  # draft scale 1, not an error
    assert [r.error for r in results] == [None, None]
    assert all(isinstance(r.pixels, torch.Tensor) and r.pixels.shape == (*SPEC.size, 3) for r in results)


def test_an_image_the_gpu_rejects_falls_back_alone():
    bad = image_bytes("coffee.jpg")
    results = collect(gpu_decoder(PillowBatch(refuse=bad)), [image_bytes("cat.jpg"), bad, image_bytes("china.jpg")])
    assert [type(r.pixels) for r in results] == [torch.Tensor, bytes, torch.Tensor]
    assert results[1].pixels == decode(bad, SPEC, Limits())


def test_a_batch_that_fails_on_the_device_is_decoded_by_pillow():
    images = [image_bytes(n) for n in ("cat.jpg", "coffee.jpg")]
    results = collect(gpu_decoder(PillowBatch(explode=True)), images)
    assert [r.pixels for r in results] == [decode(d, SPEC, Limits()) for d in images]


def test_limits_fail_the_image_and_never_reach_either_decoder():
    batch = PillowBatch()
    (result,) = collect(gpu_decoder(batch, Limits(max_bytes=100)), [image_bytes("cat.jpg")])
    assert result.error.kind == "image_too_large" and batch.batches == []


def test_batches_take_what_is_pending_up_to_the_cap():
    batch = PillowBatch()
    decoder = gpu_decoder(batch, max_batch=4)
    started, gate = threading.Event(), threading.Event()

    def hold(_: DecodeResult) -> None:  # holds the thread while the rest queue up
        started.set()
        gate.wait(10)

    decoder.submit(image_bytes("cat.jpg"), hold)
    assert started.wait(10)  # the first image went alone, as a batch of one
    results: list[DecodeResult] = []
    for _ in range(9):
        decoder.submit(image_bytes("cat.jpg"), results.append)
    gate.set()
    decoder.close()
    assert len(results) == 9 and batch.batches == [1, 4, 4, 1]


def test_a_takes_images_come_back_in_one_list_per_decode_call():
    jpegs = [image_bytes(n) for n in ("cat.jpg", "coffee.jpg", "china.jpg")] * 2
    images = [*jpegs[:3], image_bytes("odd.webp"), *jpegs[3:], b"junk"]
    batch, lists, all_back = PillowBatch(), [], threading.Event()

    def done(results: list[tuple[int, DecodeResult]]) -> None:
        lists.append(results)
        if sum(map(len, lists)) == len(images):
            all_back.set()

    decoder = gpu_decoder(batch, max_batch=4)
    decoder.submit_many(images, done)
    assert all_back.wait(30)
    decoder.close()
    indices = sorted(i for results in lists for i, _ in results)
    assert indices == list(range(len(images)))  # every image exactly once
    assert batch.batches == [4, 2]  # the take's six JPEGs in calls of at most max_batch
    on_gpu = sorted(len(r) for r in lists if all(isinstance(res.pixels, torch.Tensor) for _, res in r))
    assert on_gpu == [2, 4]  # each call's images handed on together, not one callback per image
    by_index = dict(pair for results in lists for pair in results)
    assert by_index[3].pixels == decode(images[3], SPEC, Limits()) and by_index[7].error.kind == "unsupported_image"


# -- mixed batches reach the model; the --decode flag -------------------------------------------------


def test_tensor_and_mixed_batches_predict_what_bytes_do(tiny_model_path):
    model = load_model(tiny_model_path, max_batch=8)
    predictor = Predictor(model, 8)
    spec = model.info.preprocess
    raw = [decode(image_bytes(n), spec, Limits()) for n in ("cat.jpg", "coffee.jpg", "china.jpg")]
    tensors = [torch.frombuffer(bytearray(p), dtype=torch.uint8).view(32, 32, 3) for p in raw]
    want, _ = predictor.predict(raw)
    assert predictor.predict(tensors)[0] == want
    assert predictor.predict([tensors[0], raw[1], tensors[2]])[0] == want


@pytest.mark.parametrize(
    "values, error",
    [
        ({"decode": "gpu"}, "needs a CUDA device|decodes on a CUDA device"),
        ({"decode": "fast"}, "cpu, gpu or auto"),
        ({"decode": "auto", "decode_sync": "maybe"}, "on or off"),
        ({"decode": "gpu", "devices": "cpu:2"}, "CUDA device"),
        ({"decode": "auto", "decode_hw_load": 1.5}, "between 0 and 1"),
        ({"decode": "auto", "decode_hw_load": -0.1}, "between 0 and 1"),
    ],
)
def test_decode_flags_refuse_what_cannot_work(values, error):
    with pytest.raises(SystemExit, match=error):
        check_decode(WorkerSettings(model="m", **values))


@pytest.mark.parametrize(
    "values",
    [
        {"decode": "gpu", "device": "cuda:1"},
        {"decode": "gpu", "devices": "all"},
        {"decode": "auto"},
        {"decode": "cpu", "decode_sync": "off"},
        {"decode": "auto", "decode_hw_load": 0.5},
    ],
)
def test_decode_flags_accept_what_can(values):
    settings = WorkerSettings(model="m", **values)
    assert check_decode(settings) is None  # accepted: no SystemExit
    assert (settings.decode, settings.decode_sync) == (values["decode"], values.get("decode_sync", "on"))


def test_the_decode_flag_has_an_environment_twin():
    import argparse

    from worker.config import add_arguments, settings_from

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    env = {"WORKER_MODEL": "m", "WORKER_DECODE": "cpu", "WORKER_DECODE_SYNC": "off"}
    settings = settings_from(parser.parse_args([]), env)
    assert (settings.decode, settings.decode_sync) == ("cpu", "off")
    assert settings_from(parser.parse_args(["--decode", "auto"]), env).decode == "auto"
    assert WorkerSettings(model="m").decode == "auto"


def test_auto_on_a_cpu_device_takes_pillow_without_importing_nvimgcodec(tiny_model_path):
    from worker.decode.gate import NoGate
    from worker.service import make_decoder

    imported_before = "nvidia.nvimgcodec" in sys.modules  # the GPU tests, run first in the same process
    decoder = make_decoder(
        WorkerSettings(model="m", decode="auto", decode_threads=1), SPEC, NoGate(), torch.device("cpu")
    )
    try:
        assert isinstance(decoder, ThreadDecoder)
        assert imported_before or "nvidia.nvimgcodec" not in sys.modules
    finally:
        decoder.close()
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        make_decoder(WorkerSettings(model="m", decode="gpu"), SPEC, NoGate(), torch.device("cpu"))

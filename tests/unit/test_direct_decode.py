"""The direct path for plain JPEGs (Pillow's libjpeg decoder, resize and crop on its C objects, no ``Image.open``)
against ``pillow_decode``: the same pixels, or the same refusal, for every test image, every kind of JPEG the
scan tells apart, every draft scale, and fuzzed files (headers and entropy-coded data alike)."""

from __future__ import annotations

import io
import random
import re
from collections.abc import Callable

from PIL import Image, ImageFile

from tests.unit.test_jpegscan import PHOTOS, exif, jpeg, mutate, only_pillow_exif_warnings, variants
from worker.decode import cpu, libjpeg
from worker.decode.cpu import ImageError, Limits, Preprocess, decode, pillow_decode

LIMITS = Limits()
SPECS = [
    Preprocess(size=(32, 32), resize="stretch"),  # the overhead regime's tiny model
    Preprocess(size=(224, 224)),  # the demo model: draft scales 1 to 4 on the photos
    Preprocess(size=(24, 40)),  # small and not square: scale 8 on the photos, odd crops
]


def outcome(read: Callable[..., bytes | None], data: bytes, spec: Preprocess, limits: Limits = LIMITS) -> object:
    """The pixels, or the refusal's kind and words (the words become the job's error text; how many bytes of a
    truncated file libjpeg left unread depends on how it was fed: Pillow feeds 64 KB at a time)."""
    try:
        return read(data, spec, limits)
    except ImageError as exc:
        return (
            "refused",
            type(exc).__name__,
            re.sub(r"\(\d+ bytes not processed\)", "(N bytes not processed)", str(exc)),
        )


def photo_like(size: tuple[int, int], **save: object) -> bytes:
    """Noisy pixels, so the entropy-coded data is not one flat block."""
    rng = random.Random(size[0] * 7 + size[1])
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)).resize(size)
    buf = io.BytesIO()
    image.save(buf, "JPEG", **save)
    return buf.getvalue()


def plain_jpegs() -> list[bytes]:
    made = [photo_like((48, 48)), photo_like((333, 517)), photo_like((20, 12)), photo_like((1, 1))]
    made += [photo_like((300, 200), subsampling=s) for s in (0, 1, 2)]
    made += [photo_like((257, 129), progressive=True), photo_like((200, 300), exif=exif(1))]
    made += [photo_like((64, 64), restart_marker_blocks=1), photo_like((96, 64), quality=30)]
    buf = io.BytesIO()
    Image.frombytes("L", (90, 70), random.Random(5).randbytes(90 * 70)).save(buf, "JPEG")
    return [*made, buf.getvalue(), jpeg("L")]


def test_plain_jpegs_take_the_direct_path_and_give_pillows_pixels():
    odd = {"cmyk", "rotated"}  # odd_cmyk.jpg, odd_exif_rotated.jpg: Pillow's path
    photos = [path.read_bytes() for path in PHOTOS if path.suffix == ".jpg" and not odd & set(path.stem.split("_"))]
    for data in plain_jpegs() + photos:
        for spec in SPECS:
            direct = cpu._plain_jpeg(data, spec, LIMITS)
            assert direct is not None  # taken: not silently sent to Image.open
            assert direct == pillow_decode(data, spec, LIMITS)
            assert len(direct) == spec.size[0] * spec.size[1] * 3


def test_every_other_image_gets_the_same_answer_from_both_paths():
    others = [path.read_bytes() for path in PHOTOS] + variants() + [jpeg(exif=exif(6)), jpeg("CMYK")]
    for data in others:
        for spec in SPECS:
            assert outcome(decode, data, spec) == outcome(pillow_decode, data, spec)
    assert cpu._plain_jpeg(jpeg(exif=exif(6)), SPECS[0], LIMITS) is None  # rotated: Pillow's path
    assert cpu._plain_jpeg(jpeg("CMYK"), SPECS[0], LIMITS) is None


def test_truncated_and_limits_are_refused_as_pillow_refuses_them():
    data = photo_like((300, 200))
    for cut in (len(data) // 3, len(data) // 2, len(data) - 20):
        assert outcome(decode, data[:cut], SPECS[1]) == outcome(pillow_decode, data[:cut], SPECS[1])
    assert outcome(decode, data[: len(data) // 2], SPECS[1])[:2] == ("refused", "UnsupportedImage")
    for limits in (Limits(max_bytes=100), Limits(max_pixels=1000)):
        assert cpu._plain_jpeg(data, SPECS[1], limits) is None
        assert outcome(decode, data, SPECS[1], limits)[:2] == ("refused", "ImageTooLarge")


def test_pillows_own_settings_send_the_image_to_image_open(monkeypatch):
    data = photo_like((300, 200))  # 60,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # Pillow's bomb guard, lowered by someone
    assert cpu._plain_jpeg(data, SPECS[1], LIMITS) is None
    assert outcome(decode, data, SPECS[1]) == outcome(pillow_decode, data, SPECS[1])
    assert outcome(decode, data, SPECS[1])[:2] == ("refused", "ImageTooLarge")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # no guard: the direct path again
    assert cpu._plain_jpeg(data, SPECS[1], LIMITS) is not None
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # Pillow then decodes what a file holds
    cut = data[: len(data) // 2]
    assert cpu._plain_jpeg(cut, SPECS[1], LIMITS) is None
    assert decode(cut, SPECS[1], LIMITS) == pillow_decode(cut, SPECS[1], LIMITS)


def test_decode_takes_the_direct_path(monkeypatch):
    data = photo_like((96, 64))
    want = pillow_decode(data, SPECS[1], LIMITS)
    assert cpu.direct_path_works()  # checked (it calls pillow_decode) before pillow_decode is taken away

    def no_image_open(*args: object) -> bytes:
        raise AssertionError("Image.open's path taken")

    monkeypatch.setattr(cpu, "pillow_decode", no_image_open)
    assert decode(data, SPECS[1], LIMITS) == want


def scan_mutant(data: bytes, rng: random.Random) -> bytes:
    """Flipped bytes or a cut in the entropy-coded data (after the header)."""
    out = bytearray(data)
    start = data.find(b"\xff\xda") + 20
    if rng.random() < 0.3:
        return bytes(out[: rng.randrange(start, len(out))])
    for _ in range(rng.randint(1, 6)):
        out[rng.randrange(start, len(out))] = rng.randrange(256)
    return bytes(out)


def test_fuzzed_files_get_the_same_pixels_or_refusal_from_both_paths():
    rng = random.Random(23)
    small = plain_jpegs()
    photos = [path.read_bytes() for path in PHOTOS if path.suffix == ".jpg"]
    direct = 0
    for n in range(800):
        base = photos[n % len(photos)] if n % 20 == 0 else small[n % len(small)]
        data = mutate(base, rng) if n % 2 else scan_mutant(base, rng)
        spec = SPECS[n % len(SPECS)]
        with only_pillow_exif_warnings():  # Pillow warns of corrupt EXIF on some mutants (decode's fallback too)
            pillow = outcome(pillow_decode, data, spec)
            assert outcome(decode, data, spec) == pillow, f"mutant {n}"
            mine = outcome(cpu._plain_jpeg, data, spec)
        if mine is not None:  # taken: the direct path's own answer, whatever decode() chose
            direct += 1
            assert mine == pillow, f"mutant {n}"
    assert direct > 300  # most mutants still take the direct path: it is what is being compared


def test_a_pillow_whose_internals_moved_decodes_everything_through_image_open(monkeypatch, caplog):
    data = photo_like((64, 48))

    def moved(*args: object) -> None:
        raise AttributeError("module 'PIL._imaging' has no attribute 'jpeg_decoder'")

    def shifted(image: object, width: int, height: int) -> bytes:  # still runs, but not as tobytes() does
        return bytes(width * height * 3)

    try:
        for name, stand_in, why in (("_decoded", moved, "AttributeError"), ("_encoded", shifted, "pixels differ")):
            with monkeypatch.context() as patched:
                patched.setattr(libjpeg, name, stand_in)
                cpu.direct_path_works.reset()
                assert decode(data, SPECS[0], LIMITS) == pillow_decode(data, SPECS[0], LIMITS)  # not refused
                assert not cpu.direct_path_works()
            assert "direct JPEG path is off" in caplog.text and why in caplog.text
        cpu.direct_path_works.reset()
        with monkeypatch.context() as patched:
            patched.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the check's own images refused: no verdict yet
            assert not cpu.direct_path_works() and cpu.direct_path_works.verdict is None
    finally:
        cpu.direct_path_works.reset()
    assert cpu.direct_path_works()  # this Pillow: on

"""The pixel budget's header read: the JPEG marker walk agrees with Pillow on every test photo and on fuzz."""

from __future__ import annotations

import io
import random

from PIL import Image

from worker.decode.budget import header_pixels, jpeg_pixels
from worker.decode.jpegscan import scan_jpeg

from ..conftest import all_images


def pillow_pixels(data: bytes) -> int:
    """Pillow's width x height; 0 where Pillow cannot read the header (it says so with an OSError, such as
    UnidentifiedImageError, or refuses a frame too large to be a photo). Any other exception is a test failure."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size[0] * img.size[1]
    except (OSError, Image.DecompressionBombError):
        return 0


def test_the_marker_walk_agrees_with_pillow_on_every_jpeg_and_leaves_the_rest_to_it():
    seen = 0
    for path in all_images():
        name, data = path.name, path.read_bytes()
        fast = jpeg_pixels(data)
        if data[:2] == b"\xff\xd8":
            assert fast == pillow_pixels(data), name
            seen += 1
        else:
            assert fast == 0, name
        assert header_pixels(data) == pillow_pixels(data), name
    assert seen >= 5


def test_an_exif_thumbnail_is_not_taken_for_the_photo():
    thumb = io.BytesIO()
    Image.new("RGB", (16, 8)).save(thumb, "JPEG")
    exif = Image.Exif()
    photo = io.BytesIO()
    Image.new("RGB", (640, 480)).save(photo, "JPEG", exif=exif.tobytes())
    data = photo.getvalue()
    # an APP1 segment carrying a whole JPEG (a thumbnail with its own SOF), right after SOI
    app1 = b"Exif\x00\x00" + thumb.getvalue()
    data = data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]
    assert jpeg_pixels(data) == 640 * 480 == pillow_pixels(data)


def test_fuzzed_jpegs_never_raise_and_never_claim_more_than_the_frame_says():
    rng = random.Random(7)
    base = next(p.read_bytes() for p in all_images() if p.read_bytes()[:2] == b"\xff\xd8")
    compared = 0
    for _ in range(500):
        data = bytearray(base[:4000])
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(2, len(data))] = rng.randrange(256)
        fast = jpeg_pixels(bytes(data))  # never raises
        assert isinstance(fast, int) and fast >= 0
        pillow = pillow_pixels(bytes(data))
        if fast and pillow:
            assert fast == pillow
            compared += 1
    assert compared >= 400  # most mutations leave a frame both read (477 of 500 with this seed): the check ran


def test_the_budget_read_from_the_direct_decodes_scan_agrees_with_its_own_walk_on_photos_and_fuzz():
    """The decode pool walks a JPEG once (``scan_jpeg``) for the budget and the direct decode: where that scan
    answers, its size is the size the budget's own reading (marker walk, else Pillow) finds."""
    rng = random.Random(11)
    photos = [p.read_bytes() for p in all_images()]
    fuzzed = []
    for base in (p for p in photos if p[:2] == b"\xff\xd8"):
        for _ in range(60):
            data = bytearray(base[:3000])
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(2, len(data))] = rng.randrange(256)
            fuzzed.append(bytes(data))
    answered = 0
    for data in photos + fuzzed:
        jpeg = scan_jpeg(data)
        assert header_pixels(data, jpeg) == header_pixels(data)
        answered += jpeg is not None
    assert answered >= 50

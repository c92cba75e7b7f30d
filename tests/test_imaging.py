"""Photos as cameras and editors write them: EXIF orientation, CMYK, 16-bit, palettes and alpha.

Every file is built here. ``decode_image`` is the one decoder of prepare and the service, so what
holds here holds in both (the service test at the end checks it over HTTP too).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks.serve_load import photo_jpeg
from flowerlab.imaging import (
    ALPHA_BACKGROUND,
    ExtremeAspectError,
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    scaled_to_8_bits,
    square_resize,
)
from tests.builders import encode_image


def upright_photo(width: int = 48, height: int = 32) -> Image.Image:
    """A photo whose orientation shows: red top-left quarter, blue bottom, a green right edge."""
    pixels = np.full((height, width, 3), 200, dtype=np.uint8)
    pixels[: height // 2, : width // 2] = (220, 20, 20)
    pixels[height * 3 // 4:, :] = (20, 20, 220)
    pixels[:, width - 4:] = (20, 200, 20)
    return Image.fromarray(pixels)


def with_orientation(upright: Image.Image, orientation: int, fmt: str) -> bytes:
    """The pixels a camera stores for ``upright`` held in ``orientation``, tagged with it."""
    stored = {3: upright.transpose(Image.Transpose.ROTATE_180),
              6: upright.transpose(Image.Transpose.ROTATE_90),
              8: upright.transpose(Image.Transpose.ROTATE_270)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    upright = upright_photo()
    decoded = decode_image(with_orientation(upright, orientation, "PNG"))
    assert decoded.size == upright.size
    assert np.array_equal(pixels(decoded), pixels(upright))


def test_exif_rotated_jpeg_comes_out_upright() -> None:
    upright = upright_photo(64, 40)
    decoded = decode_image(with_orientation(upright, 6, "JPEG"))
    assert decoded.size == (64, 40)
    assert np.abs(pixels(decoded) - pixels(upright)).mean() < 6


def test_cmyk_jpeg_keeps_its_colours() -> None:
    upright = upright_photo()
    data = encode_image(upright.convert("CMYK"), "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert np.abs(pixels(decode_image(data)) - pixels(upright)).mean() < 8


def test_16_bit_png_keeps_its_tones() -> None:
    ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.uint16)
    data = encode_image(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    decoded = pixels(decode_image(data))
    expected = np.round(ramp / 257).astype(int)
    assert np.abs(decoded - expected[..., None]).max() <= 1  # not clipped to white above 255


@pytest.mark.parametrize("levels", [
    np.arange(65536).astype(np.uint16),  # every 16-bit level
    np.array([-2**31, -5, 0, 1, 127, 128, 255, 256, 32767, 65535, 65536, 2**31 - 1], dtype=np.int32),
    np.arange(-3, 256).astype(np.int32),  # an "I" image within 8 bits keeps its levels
])
def test_deep_levels_round_to_8_bits_exactly(levels: np.ndarray) -> None:
    """The integer scaling (4 bytes a pixel, not float64's 8 and its temporaries) equals the rounded
    quotient for every level, with out-of-range "I" levels clipped."""
    mode = "I;16" if levels.dtype == np.uint16 else "I"
    top = 65535 if mode == "I;16" or levels.max() > 255 else 255
    expected = np.clip(np.round(levels.astype(np.float64) * 255 / top), 0, 255).astype(np.uint8)
    scaled = scaled_to_8_bits(levels, mode)
    assert scaled.dtype == np.uint8
    assert np.array_equal(scaled, expected)


def test_square_resize_refuses_empty_images_and_extreme_aspect_ratios() -> None:
    """Shared by prepare and the service: an image whose resized shorter side would make more than
    ``max_pixels`` (a 1x30000 PNG is 201 bytes and 30000 pixels; at 224 px it would be 1.5 gigapixels),
    and an empty tensor (torchvision divided by zero), are refused with a reason."""
    line = torch.zeros(3, 1, 30000, dtype=torch.uint8)
    with pytest.raises(ExtremeAspectError, match="aspect ratio too extreme: 30000x1 resized to 224 pixels on "
                                                 "its shorter side would be 1505280000 pixels, more than "
                                                 "the limit of 89478485"):
        square_resize(line, 224)
    assert square_resize(line, 4).shape == (3, 4, 4)  # 480000 pixels: within the limit
    with pytest.raises(ExtremeAspectError, match="more than the limit of 100000"):
        square_resize(line, 4, max_pixels=100_000)
    with pytest.raises(ImageDecodeError, match=r"empty image: 20x0 pixels"):
        square_resize(torch.zeros(3, 0, 20, dtype=torch.uint8), 16)


def test_a_jpeg_over_the_pixel_limit_is_decoded_when_its_draft_is_within_it() -> None:
    """A 90-MP JPEG (phones take 108 MP) is over Pillow's 89.5-MP limit, which prepare used to
    apply to the file; decoded at 1/8 scale in the DCT domain it is 1.4 MP."""
    image = Image.new("RGB", (9500, 9500), (200, 30, 30))
    data = encode_image(image, "JPEG")
    del image
    assert decode_image(data, draft_size=224).size == (1188, 1188)
    with pytest.raises(ImageTooLargeError, match="image is 9500x9500 = 90250000 pixels, more than the "
                                                 "limit of 89478485"):
        decode_image(data)  # no draft: every pixel would be decoded
    with pytest.raises(ImageTooLargeError, match="9500x9500 = 90250000 pixels, 1411344 once drafted, more "
                                                 "than the limit of 1000000"):
        decode_image(data, max_pixels=1_000_000, draft_size=224)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "not a recognised image format: the file is empty"),
    (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "HEIC/AVIF (an iPhone's default): convert it to JPEG"),
    (b"just some text", "not a recognised image format"),
])
def test_unrecognised_files_say_what_they_are_where_it_shows(tmp_path, data: bytes, reason: str) -> None:
    (tmp_path / "photo.jpg").write_bytes(data)
    for source in (data, tmp_path / "photo.jpg"):
        with pytest.raises(ImageDecodeError) as caught:
            decode_image(source)
        assert str(caught.value).endswith(reason)


def test_palette_transparency_is_composited_on_the_fixed_background() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 250, 30, 30] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))  # left half opaque red, right half index 0 (transparent)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    decoded = pixels(decode_image(buffer.getvalue()))
    assert (decoded[:, :4] == (250, 30, 30)).all()
    assert (decoded[:, 4:] == ALPHA_BACKGROUND).all()  # not the hidden palette colour (black)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_on_the_fixed_background(mode: str) -> None:
    alpha = np.tile(np.array([0, 128, 255], dtype=np.uint8), (4, 1))  # transparent, half, opaque
    if mode == "LA":
        colour = np.full((4, 3), 40, dtype=np.uint8)
        image = Image.fromarray(np.stack([colour, alpha], axis=-1), "LA")
        expected_colour = np.array([40, 40, 40])
    else:
        colour = np.zeros((4, 3, 3), dtype=np.uint8) + np.array([10, 200, 90], dtype=np.uint8)
        image = Image.fromarray(np.concatenate([colour, alpha[..., None]], axis=-1), "RGBA")
        expected_colour = np.array([10, 200, 90])
    decoded = pixels(decode_image(encode_image(image, "PNG")))
    background = np.array(ALPHA_BACKGROUND)
    for column, a in enumerate((0, 128, 255)):
        expected = np.round((a * expected_colour + (255 - a) * background) / 255)
        assert np.abs(decoded[:, column] - expected).max() <= 1, (mode, a, decoded[0, column])


def test_service_classifies_a_rotated_phone_photo_as_the_upright_one(client: TestClient) -> None:
    upright = upright_photo(60, 36)
    tagged = with_orientation(upright, 6, "PNG")
    assert square_resize(decode_image(tagged), 32).equal(square_resize(upright, 32))

    def predict(data: bytes) -> list[dict]:
        response = client.post("/predict", params={"k": 3}, files={"file": ("p.png", data)})
        assert response.status_code == 200, response.text
        return response.json()["predictions"]

    assert predict(tagged) == predict(encode_image(upright, "PNG"))
    sideways = encode_image(upright.transpose(Image.Transpose.ROTATE_90), "PNG")  # no tag
    assert predict(sideways) != predict(tagged)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "WEBP", "GIF"])
def test_plain_photos_decode_to_loaded_rgb_pixels(fmt: str) -> None:
    """The decoded image outlives the file it came from (decode_image closes it)."""
    upright = upright_photo()
    decoded = decode_image(encode_image(upright, fmt))
    assert decoded.mode == "RGB" and decoded.size == upright.size
    assert square_resize(decoded, 16).shape == (3, 16, 16)


def test_a_large_jpeg_decodes_at_reduced_size_in_the_dct_domain() -> None:
    data = photo_jpeg((800, 600))
    assert decode_image(data).size == (800, 600)
    drafted = decode_image(data, draft_size=64)
    assert drafted.size == (100, 75)  # 1/8 scale: the largest that keeps both sides >= 64
    assert decode_image(data, draft_size=300).size == (400, 300)  # 1/2 scale
    assert decode_image(data, draft_size=400).size == (800, 600)  # under twice the size: full decode
    png = encode_image(decode_image(data), "PNG")
    assert decode_image(png, draft_size=64).size == (800, 600)  # JPEG only
    full, reduced = square_resize(decode_image(data), 64), square_resize(drafted, 64)
    assert not torch.equal(full, reduced)
    assert (full.float() - reduced.float()).abs().mean() < 4  # of 255: the same picture


def test_a_drafted_rotated_jpeg_still_comes_out_upright() -> None:
    big = upright_photo(480, 320)
    image = decode_image(with_orientation(big, 6, "JPEG"), draft_size=64)
    assert image.size == (120, 80)  # stored 320x480, 1/4 scale, then turned upright
    assert np.asarray(image)[5, 5, 0] > 150 and np.asarray(image)[-3, 5, 2] > 150


def test_prepare_and_the_service_see_the_same_pixels_of_a_large_jpeg(tmp_path) -> None:
    from flowerlab.config import DataParams, Source
    from flowerlab.data.preparation import prepare_images
    from flowerlab.data.sources import read_imagefolder
    from serve.predictor import decode_upload

    data = photo_jpeg((800, 600))
    (tmp_path / "roses").mkdir()
    (tmp_path / "roses" / "photo.jpg").write_bytes(data)
    raw = read_imagefolder(DataParams(source=Source.imagefolder, path=str(tmp_path), image_size=64))
    stored, skipped = prepare_images(raw, 64, "imagefolder", progress=False, workers=0)
    served = decode_upload(data, 64, max_pixels=10_000_000)
    assert not skipped and torch.equal(torch.from_numpy(stored.images[0]).permute(2, 0, 1), served)
    assert not torch.equal(served, square_resize(decode_image(data), 64))  # the draft was used

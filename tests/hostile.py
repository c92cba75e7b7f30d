"""Hostile and odd uploads, every one built here: broken files, bombs, lies about the format, and the
unusual but valid images cameras, editors and attackers write.

``corpus(max_upload_bytes)`` gives each kind with the status /predict and /reconstruct must answer:
200, or the 4xx of the service's conventions (413 too large, 415 not a supported image, 422
undecodable or unusable). Never a 5xx.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tests.builders import encode_image, noise_image, png_declaring


@dataclass(frozen=True)
class Upload:
    kind: str
    filename: str
    data: bytes
    status: int  # what the service must answer
    detail: str  # a part of the answer's detail (empty for 200)


def chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int) -> bytes:
    """A real 1-bit PNG of ``width`` x ``height`` black pixels: every row decodes, the file stays small."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the packed pixels
    stream = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def saved(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def frames(count: int = 3, size: tuple[int, int] = (24, 16)) -> list[Image.Image]:
    return [Image.new("RGB", size, (60 * i, 200 - 50 * i, 90)) for i in range(count)]


def animated(fmt: str, **options: object) -> bytes:
    first, *rest = frames()
    return saved(first, fmt, save_all=True, append_images=rest, duration=50, **options)


def palette_with_transparency() -> bytes:
    image = noise_image(24, 24).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return saved(image, "PNG", transparency=0)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return saved(noise_image(40, 24), "JPEG", exif=exif.tobytes())


def png_with_zip() -> bytes:
    """A valid PNG with a ZIP archive appended: both readers accept the file."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("payload.html", "<script>alert(1)</script>")
    return encode_image(noise_image(16, 16), "PNG") + archive.getvalue()


def gif_js_polyglot() -> bytes:
    """``GIF89a/*...*/=alert(1)//``: a GIF header that is also JavaScript (width 0x2A2F, a comment opener)."""
    logical = b"/*" + struct.pack("<H", 10) + b"\x00\x00\x00"  # width 10799, height 10, no colour table
    return b"GIF89a" + logical + b"*/=alert(1);//" + b"\x3b"


def png_bad_crc() -> bytes:
    data = bytearray(encode_image(noise_image(16, 16), "PNG"))
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    return bytes(data)


def corpus(max_upload_bytes: int) -> list[Upload]:
    jpeg = encode_image(noise_image(), "JPEG")
    png = encode_image(noise_image(), "PNG")
    photo = encode_image(noise_image(64, 48), "JPEG")
    return [
        Upload("truncated_jpeg", "photo.jpg", jpeg[: len(jpeg) // 2], 422, "truncated"),
        Upload("truncated_png", "photo.png", png[: len(png) * 2 // 3], 422, "truncated"),
        Upload("png_bad_crc", "photo.png", png_bad_crc(), 422, "corrupt"),
        Upload("empty", "photo.jpg", b"", 422, "the uploaded file is empty"),
        Upload("text_named_jpg", "photo.jpg", b"GET / HTTP/1.1\r\nnot an image at all\n" * 4, 415,
               "not an image in a supported format"),
        Upload("html_named_png", "photo.png", b"<!DOCTYPE html><html><script>alert(1)</script></html>", 415,
               "not an image in a supported format"),
        Upload("png_decompression_bomb", "bomb.png", png_bomb(8000, 6000), 413,
               "more than the limit of 40000000"),
        Upload("header_claims_100k_x_100k", "huge.png", png_declaring(100_000, 100_000), 413,
               "decompression bomb"),
        Upload("oversize_body", "big.jpg", photo + b"\0" * (max_upload_bytes + 1 - len(photo)), 413,
               f"larger than the limit of {max_upload_bytes} bytes"),
        Upload("cmyk_jpeg", "cmyk.jpg", saved(noise_image().convert("CMYK"), "JPEG"), 200, ""),
        Upload("png_16_bit", "deep.png", saved(Image.fromarray(
            np.arange(32 * 20, dtype=np.uint16).reshape(20, 32) * 97), "PNG"), 200, ""),
        Upload("palette_png_with_transparency", "palette.png", palette_with_transparency(), 200, ""),
        Upload("animated_gif", "anim.gif", animated("GIF", loop=0), 200, ""),
        Upload("animated_webp", "anim.webp", animated("WEBP"), 200, ""),
        Upload("progressive_jpeg", "prog.jpg", saved(noise_image(), "JPEG", progressive=True), 200, ""),
        Upload("exif_rotated_jpeg", "rotated.jpg", exif_rotated_jpeg(), 200, ""),
        Upload("one_pixel", "dot.png", encode_image(noise_image(1, 1), "PNG"), 200, ""),
        Upload("aspect_10000x3", "strip.png", encode_image(noise_image(10000, 3), "PNG"), 200, ""),
        Upload("aspect_bomb_200000x1", "line.png", png_bomb(200_000, 1), 422, "aspect ratio"),
        Upload("png_with_zip_appended", "poly.png", png_with_zip(), 200, ""),
        Upload("gif_js_polyglot", "poly.gif", gif_js_polyglot(), 422, "corrupt"),
    ]

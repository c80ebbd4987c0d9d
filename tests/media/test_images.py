"""media/images.py on its own: what normalize and the variants make of every kind of input.

No worker, no database: these functions read a path and write a path.
"""

from pathlib import Path

import pytest
from PIL import Image

from media.images import (
    VARIANTS,
    VARIANTS_BY_NAME,
    ImageRejected,
    image_header_read,
    image_normalize,
    image_variant_make,
)
from tests.media.images_for_tests import (
    XMP_PACKET,
    encoded,
    gradient,
    jpeg_with_every_kind_of_metadata,
    png_claiming_size,
)

METADATA_KEYS = {"exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment", "photoshop"}
# Byte patterns a metadata block leaves in a file, whichever key a decoder files it under.
METADATA_MARKERS = [b"Exif\0", b"ICC_PROFILE", b"http://ns.adobe.com/xap", b"xpacket", b"iCCP",
                    b"eXIf", b"tEXt", b"iTXt", b"zTXt", b"shot at home", b"PhoneMaker"]  # fmt: skip
MAX_PIXELS = 50_000_000


def written(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def assert_clean_8_bit(path: Path, *, mode: str) -> Image.Image:
    """An 8-bit RGB(A) file with no metadata, checked both as decoded and as raw bytes."""
    raw = path.read_bytes()
    for marker in METADATA_MARKERS:
        assert marker not in raw, (path.name, marker)
    if path.suffix == ".png":
        bit_depth, colour_type = raw[24], raw[25]  # from IHDR, right after the signature
        assert (bit_depth, colour_type) == (8, {"RGB": 2, "RGBA": 6}[mode])
    image = Image.open(path)
    image.load()
    assert image.mode == mode
    assert not image.getexif()
    assert not METADATA_KEYS & set(image.info), image.info
    return image


def halves(mode: str, left, right, size=(64, 32)) -> Image.Image:
    width, height = size
    image = Image.new(mode, size, left)
    image.paste(right, (width // 2, 0, width, height))
    return image


def palette_png_with_a_transparent_half() -> bytes:
    image = Image.new("P", (64, 32), 0)
    image.putpalette([255, 255, 255, 30, 30, 220] + [0, 0, 0] * 254)
    image.paste(1, (32, 0, 64, 32))  # right half: palette entry 1, opaque blue
    return encoded(image, "PNG", transparency=0)  # left half: entry 0, fully transparent


def sixteen_bit_grey_png() -> bytes:
    # Left half at half of 16-bit full scale, right half at full scale.
    return encoded(halves("I;16", 0x8000, 0xFFFF), "PNG")


def animated_gif_red_then_blue() -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in [(220, 30, 30), (30, 30, 220)]]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def webp_with_a_transparent_half() -> bytes:
    return encoded(halves("RGBA", (0, 0, 0, 0), (30, 30, 220, 255)), "WEBP", lossless=True)


def cmyk_jpeg_red() -> bytes:
    return encoded(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95)


def close(actual, expected, tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# --- normalize -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "mode", "suffix", "left", "right"),
    [
        pytest.param(cmyk_jpeg_red, "RGB", ".jpg", (255, 0, 0), (255, 0, 0), id="cmyk-jpeg"),
        pytest.param(palette_png_with_a_transparent_half, "RGBA", ".png",
                     (255, 255, 255, 0), (30, 30, 220, 255), id="palette-png-transparency"),
        pytest.param(sixteen_bit_grey_png, "RGB", ".jpg",
                     (128, 128, 128), (255, 255, 255), id="16-bit-grey-png"),
        pytest.param(lambda: encoded(halves("LA", (90, 0), (200, 255)), "PNG"), "RGBA", ".png",
                     (90, 90, 90, 0), (200, 200, 200, 255), id="la-png"),
        pytest.param(animated_gif_red_then_blue, "RGB", ".jpg",
                     (220, 30, 30), (220, 30, 30), id="animated-gif-first-frame"),
        pytest.param(webp_with_a_transparent_half, "RGBA", ".png",
                     (0, 0, 0, 0), (30, 30, 220, 255), id="webp-alpha"),
        pytest.param(lambda: encoded(halves("L", 40, 210), "JPEG"), "RGB", ".jpg",
                     (40, 40, 40), (210, 210, 210), id="greyscale-jpeg"),
        pytest.param(lambda: encoded(halves("1", 0, 1), "PNG"), "RGB", ".jpg",
                     (0, 0, 0), (255, 255, 255), id="bilevel-png"),
    ],
)  # fmt: skip
def test_every_accepted_kind_of_image_normalizes_to_8_bit_rgb_or_rgba_without_metadata(
    tmp_path, source, mode, suffix, left, right
):
    # given an image of one of the modes cameras, editors and browsers produce
    path = written(tmp_path, "source.upload", source())
    # when it is normalized
    original, width, height = image_normalize(path, tmp_path / "original")
    # then it is 8-bit RGB (a photo, as JPEG) or RGBA (transparency, as PNG), with no metadata
    assert original == tmp_path / f"original{suffix}"
    image = assert_clean_8_bit(original, mode=mode)
    assert image.size == (width, height) == Image.open(path).size
    # and its pixels are what the source showed (not clipped, inverted or another frame)
    assert close(image.getpixel((4, height // 2)), left), image.getpixel((4, height // 2))
    assert close(image.getpixel((width - 4, height // 2)), right)


def test_xmp_a_comment_an_icc_profile_and_exif_with_gps_are_all_dropped(tmp_path):
    # given a JPEG carrying every kind of metadata: EXIF with a GPS position, XMP, ICC, COM
    source = written(tmp_path, "source.upload", jpeg_with_every_kind_of_metadata())
    with Image.open(source) as before:
        assert {"exif", "xmp", "icc_profile", "comment"} <= set(before.info)
        assert XMP_PACKET in source.read_bytes()
    # when it is normalized, and a variant made from it
    original, _, _ = image_normalize(source, tmp_path / "original")
    variant, _, _ = image_variant_make(original, tmp_path / "small", VARIANTS_BY_NAME["small"])
    # then neither file carries any of it
    assert_clean_8_bit(original, mode="RGB")
    assert_clean_8_bit(variant, mode="RGB")


def test_normalize_and_variants_of_an_image_with_alpha_carry_no_metadata(tmp_path):
    # given a PNG with transparency and text chunks (editors write "Software", "Comment")
    from PIL.PngImagePlugin import PngInfo

    text = PngInfo()
    text.add_text("Comment", "shot at home")
    text.add_itxt("XML:com.adobe.xmp", XMP_PACKET.decode())
    content = encoded(gradient(120, 90, "RGBA"), "PNG", pnginfo=text)
    source = written(tmp_path, "source.upload", content)
    # when it is normalized and every variant made
    original, _, _ = image_normalize(source, tmp_path / "original")
    files = [original] + [
        image_variant_make(original, tmp_path / spec.name, spec)[0] for spec in VARIANTS
    ]
    # then every file is a clean 8-bit RGBA PNG
    for path in files:
        assert path.suffix == ".png"
        assert_clean_8_bit(path, mode="RGBA")


# --- variants --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_variants_never_upscale_a_small_image_and_the_thumb_is_a_min_side_square(tmp_path, mode):
    # given a 100x80 image (as a JPEG original, or a PNG one when it has alpha)
    content = encoded(gradient(100, 80, mode), "PNG")
    original, _, _ = image_normalize(written(tmp_path, "s", content), tmp_path / "original")
    # when every variant is made
    sizes = {}
    for spec in VARIANTS:
        path, width, height = image_variant_make(original, tmp_path / spec.name, spec)
        assert Image.open(path).size == (width, height)
        sizes[spec.name] = (width, height)
    # then no variant is larger than the image, and the thumb is the largest centred square
    assert sizes == {"thumb": (80, 80), "small": (100, 80), "medium": (100, 80),
                     "large": (100, 80)}  # fmt: skip


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_variants_of_a_large_image_fit_their_long_edge_and_keep_the_aspect(tmp_path, mode):
    # given a 3000x1000 panorama
    content = encoded(gradient(3000, 1000, mode), "PNG")
    original, _, _ = image_normalize(written(tmp_path, "s", content), tmp_path / "original")
    # when every variant is made
    sizes = {
        spec.name: image_variant_make(original, tmp_path / spec.name, spec)[1:] for spec in VARIANTS
    }
    # then each fits its long edge at 3:1 (JPEG draft decoding changes none of them)
    assert sizes == {"thumb": (160, 160), "small": (480, 160), "medium": (1080, 360),
                     "large": (2048, 683)}  # fmt: skip


# --- determinism (a redelivered step rewrites identical files) ---------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: jpeg_with_every_kind_of_metadata(1600, 1200), id="jpeg-original"),
        pytest.param(lambda: encoded(gradient(1600, 1200, "RGBA"), "PNG"), id="png-original"),
        pytest.param(animated_gif_red_then_blue, id="gif"),
    ],
)
def test_normalize_and_variants_write_byte_identical_files_every_time(tmp_path, content):
    # given one source
    source = written(tmp_path, "source.upload", content())
    # when the whole pipeline's image work runs, then runs again on the same paths, and once
    # more into another folder
    runs = []
    for folder in [tmp_path / "a", tmp_path / "a", tmp_path / "b"]:
        original, _, _ = image_normalize(source, folder / "original")
        files = [original] + [
            image_variant_make(original, folder / spec.name, spec)[0] for spec in VARIANTS
        ]
        runs.append({path.name: path.read_bytes() for path in files})
    # then every run wrote the very same bytes under the very same names
    assert runs[0] == runs[1] == runs[2]
    # and the re-run left no temporary file beside them
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == sorted(runs[0])


# --- the header check ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: encoded(gradient(10, 10), "TIFF"), id="tiff"),
        pytest.param(lambda: encoded(gradient(10, 10), "BMP"), id="bmp"),
        pytest.param(lambda: encoded(gradient(10, 10), "PPM"), id="ppm"),
        pytest.param(lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", id="eps"),
        pytest.param(lambda: b"8BPS\0\x01" + b"\0" * 60, id="psd-header"),
    ],
)
def test_the_header_check_refuses_images_in_formats_that_are_not_accepted(tmp_path, content):
    # given a real image (or header) in a format Pillow could decode but we do not accept
    path = written(tmp_path, "upload.jpg", content())
    # when its header is read, then it is refused as an unsupported type
    with pytest.raises(ImageRejected) as refusal:
        image_header_read(path, max_pixels=MAX_PIXELS)
    assert refusal.value.status == 415


def test_the_header_check_reports_format_and_size_without_decoding(tmp_path):
    path = written(tmp_path, "s", encoded(gradient(300, 200), "WEBP"))
    header = image_header_read(path, max_pixels=MAX_PIXELS)
    assert (header.format, header.width, header.height) == ("WEBP", 300, 200)


@pytest.mark.parametrize("size", [(25000, 25000), (8000, 6400)], ids=["625-MP", "51-MP"])
def test_the_header_check_refuses_too_many_pixels_as_too_large(tmp_path, size):
    # given a PNG whose header claims more pixels than the limit
    path = written(tmp_path, "bomb.png", png_claiming_size(*size))
    # when its header is read, then it is refused as too large, saying the limit
    with pytest.raises(ImageRejected) as refusal:
        image_header_read(path, max_pixels=MAX_PIXELS)
    assert refusal.value.status == 413
    assert "50 MP" in str(refusal.value)

"""media/images.py on its own: what normalize and the variants make of every kind of input.

No worker, no database: these functions read a path and write a path.
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat

from media.images import (
    VARIANT_JPEG,
    VARIANTS,
    VARIANTS_BY_NAME,
    ImageRejected,
    WrittenImage,
    _save_atomically,
    image_header_read,
    image_normalize,
    image_variant_make,
    variants_made_by_normalize,
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
    original = image_normalize(path, tmp_path)["original"]
    width, height = original.width, original.height
    # then it is 8-bit RGB (a photo, as JPEG) or RGBA (transparency, as PNG), with no metadata
    assert original.path == tmp_path / f"original{suffix}"
    image = assert_clean_8_bit(original.path, mode=mode)
    assert image.size == (width, height) == Image.open(path).size
    # and its pixels are what the source showed (not clipped, inverted or another frame)
    assert close(image.getpixel((4, height // 2)), left), image.getpixel((4, height // 2))
    assert close(image.getpixel((width - 4, height // 2)), right)


def every_file_both_ways(source: Path, folder: Path) -> list[Path]:
    """The original and every variant as normalize makes them, then every variant again as a
    task of its own makes it from the original (into folder/own)."""
    outputs = image_normalize(source, folder)
    original = outputs["original"].path
    own = [image_variant_make(original, folder / "own", spec).path for spec in VARIANTS]
    return [image.path for image in outputs.values()] + own


def test_xmp_a_comment_an_icc_profile_and_exif_with_gps_are_all_dropped(tmp_path):
    # given a JPEG carrying every kind of metadata: EXIF with a GPS position, XMP, ICC, COM
    source = written(tmp_path, "source.upload", jpeg_with_every_kind_of_metadata())
    with Image.open(source) as before:
        assert {"exif", "xmp", "icc_profile", "comment"} <= set(before.info)
        assert XMP_PACKET in source.read_bytes()
    # when it is normalized (which makes the variants of so small an image too), and every
    # variant made from the original by a task of its own
    files = every_file_both_ways(source, tmp_path)
    # then none of the files carries any of it
    for path in files:
        assert_clean_8_bit(path, mode="RGB")


def test_normalize_and_variants_of_an_image_with_alpha_carry_no_metadata(tmp_path):
    # given a PNG with transparency and text chunks (editors write "Software", "Comment")
    from PIL.PngImagePlugin import PngInfo

    text = PngInfo()
    text.add_text("Comment", "shot at home")
    text.add_itxt("XML:com.adobe.xmp", XMP_PACKET.decode())
    content = encoded(gradient(120, 90, "RGBA"), "PNG", pnginfo=text)
    source = written(tmp_path, "source.upload", content)
    # when it is normalized and every variant made, by normalize and by a task of its own
    files = every_file_both_ways(source, tmp_path)
    # then every file is a clean 8-bit RGBA PNG
    for path in files:
        assert path.suffix == ".png"
        assert_clean_8_bit(path, mode="RGBA")


# --- variants --------------------------------------------------------------------------------


def variants_made(source: Path, folder: Path, *, by: str) -> dict[str, WrittenImage]:
    """Every variant of `source`, as the pipeline makes them (normalize those that need every
    pixel, tasks of their own the others) or each by a task of its own (as a redelivered or
    older message would)."""
    outputs = image_normalize(source, folder)
    original = outputs.pop("original").path
    if by == "own-task":
        outputs = {}
    return {
        spec.name: outputs.get(spec.name) or image_variant_make(original, folder, spec)
        for spec in VARIANTS
    }


MADE_BY = pytest.mark.parametrize("by", ["pipeline", "own-task"])


@MADE_BY
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_variants_never_upscale_a_small_image_and_the_thumb_is_a_min_side_square(
    tmp_path, mode, by
):
    # given a 100x80 image (as a JPEG original, or a PNG one when it has alpha)
    source = written(tmp_path, "s", encoded(gradient(100, 80, mode), "PNG"))
    # when every variant is made
    variants = variants_made(source, tmp_path, by=by)
    # then no variant is larger than the image, and the thumb is the largest centred square
    sizes = {name: (image.width, image.height) for name, image in variants.items()}
    assert sizes == {"thumb": (80, 80), "small": (100, 80), "medium": (100, 80),
                     "large": (100, 80)}  # fmt: skip
    for image in variants.values():
        assert Image.open(image.path).size == (image.width, image.height)


@MADE_BY
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_variants_of_a_large_image_fit_their_long_edge_and_keep_the_aspect(tmp_path, mode, by):
    # given a 3000x1000 panorama
    source = written(tmp_path, "s", encoded(gradient(3000, 1000, mode), "PNG"))
    # when every variant is made
    variants = variants_made(source, tmp_path, by=by)
    # then each fits its long edge at 3:1 (JPEG draft decoding changes none of them)
    sizes = {name: (image.width, image.height) for name, image in variants.items()}
    assert sizes == {"thumb": (160, 160), "small": (480, 160), "medium": (1080, 360),
                     "large": (2048, 683)}  # fmt: skip


def test_every_variant_shows_what_a_plain_resize_of_every_pixel_shows(tmp_path):
    # given a 2400x1800 photo-like JPEG: a gradient, and a hard-edged square off centre, which
    # a crop or a scale a few pixels off would move
    picture = gradient(2400, 1800)
    picture.paste((250, 250, 20), (1500, 400, 1900, 800))
    source = written(tmp_path, "s", encoded(picture, "JPEG", quality=95))
    # when it is normalized (which, at 4.3 MP, makes every variant from the pixels it decoded)
    # and every variant is also made by a task of its own (from a draft decode at 1/2, 1/4 or
    # 1/8, as for a larger image)
    outputs = image_normalize(source, tmp_path)
    assert sorted(outputs) == ["large", "medium", "original", "small", "thumb"]
    original = outputs.pop("original").path
    made = [(name, image.path) for name, image in outputs.items()] + [
        (spec.name, image_variant_make(original, tmp_path / "own", spec).path) for spec in VARIANTS
    ]
    # then each is, pixel by pixel within a few levels, the plain Pillow resize of the whole
    # decoded original to the same size (a centred square for the thumb)
    every_pixel = Image.open(original)
    every_pixel.load()
    for name, path in made:
        variant = Image.open(path)
        if VARIANTS_BY_NAME[name].square_crop:
            expected = ImageOps.fit(every_pixel, variant.size, Image.Resampling.LANCZOS)
        else:
            expected = every_pixel.resize(variant.size, Image.Resampling.LANCZOS)
        difference = ImageStat.Stat(ImageChops.difference(variant, expected)).mean
        assert max(difference) < 2.0, (name, path, difference)


@pytest.mark.parametrize(
    ("size", "made_by_normalize"),
    [
        # A 12 MP photo: 1/2 scale gives 2000 px, less than large's 2048.
        ((4000, 3000), ["large"]),
        ((3000, 4000), ["large"]),
        # 48 MP: large decodes at 1/2, the others at 1/4 or 1/8.
        ((8000, 6000), []),
        # Just above the in-line limit: medium would decode at 1/2, thumb and small at 1/4 or less.
        ((3001, 2000), ["large"]),
        # Up to 6 MP, every variant: a task of its own would cost it more than it saves.
        ((3000, 2000), ["thumb", "small", "medium", "large"]),
        ((1600, 1200), ["thumb", "small", "medium", "large"]),
        ((100, 80), ["thumb", "small", "medium", "large"]),
    ],
)
def test_normalize_makes_small_images_variants_and_those_no_reduced_scale_decode_can_serve(
    size, made_by_normalize
):
    assert [spec.name for spec in variants_made_by_normalize(size)] == made_by_normalize


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
        files = [image.path for image in variants_made(source, folder, by="pipeline").values()]
        runs.append({path.name: path.read_bytes() for path in [*folder.glob("original.*"), *files]})
    # then every run wrote the very same bytes under the very same names
    assert runs[0] == runs[1] == runs[2]
    # and the re-run left no temporary file beside them
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == sorted(runs[0])


def test_two_runs_of_one_step_at_once_leave_a_complete_file_and_no_temporary_files(tmp_path):
    # given a normalized original large enough that writing its variant takes a while
    original = written(tmp_path, "original.png", encoded(gradient(4000, 3000, "RGBA"), "PNG"))
    large = VARIANTS_BY_NAME["large"]
    expected = image_variant_make(original, tmp_path / "alone", large).path.read_bytes()
    # when two runs of the same variant step (a redelivery racing the run it replaces) write it
    # at the same moment, round after round
    start_together = threading.Barrier(2)

    def run() -> WrittenImage:
        start_together.wait()
        return image_variant_make(original, tmp_path, large)

    for _ in range(5):
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = [pool.submit(run) for _ in range(2)]
            written_paths = {future.result().path for future in runs}
        # then both succeed, and the variant is the whole image, byte for byte
        assert written_paths == {tmp_path / "large.png"}
        assert (tmp_path / "large.png").read_bytes() == expected
        # and no temporary file is left beside it
        assert sorted(path.name for path in tmp_path.iterdir()) == [
            "alone", "large.png", "original.png",
        ]  # fmt: skip


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path):
    # given an image the JPEG encoder refuses (16-bit greyscale), found out once writing began
    image = Image.new("I;16", (64, 48))
    # when a step writes it, and fails
    with pytest.raises(OSError, match="cannot write mode"):
        _save_atomically(image, tmp_path / "thumb", VARIANT_JPEG)
    # then nothing is left in the folder: no file under the final name, no temporary file
    assert list(tmp_path.iterdir()) == []


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

"""Image work, free of Django: inspect an upload, normalize it, make a variant.

Every function reads a path and writes a path; the same input always gives the same output
file, so a step that runs twice (a redelivered task) rewrites identical bytes.
"""

import contextlib
import fcntl
import math
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

# Only these decoders are ever tried: a file claiming to be a JPEG but parsing as, say, a PSD
# or an EPS (which runs Ghostscript) is refused instead of being handed to another plugin.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")


@dataclass(frozen=True)
class VariantSpec:
    name: str
    long_edge: int
    square_crop: bool = False


VARIANTS = (
    VariantSpec("thumb", 160, square_crop=True),
    VariantSpec("small", 480),
    VariantSpec("medium", 1080),
    VariantSpec("large", 2048),
)
VARIANTS_BY_NAME = {spec.name: spec for spec in VARIANTS}
# q85: visually lossless for photos at about a tenth of the bytes of q100. The original is
# baseline, not progressive: every variant task decodes it again, and libjpeg's reduced-scale
# decoding (draft) skips work only in baseline files: a thumb of a 12 MP progressive original
# costs ~3x the CPU (bench/images.py). Variants are progressive: browsers show them early.
ORIGINAL_JPEG = {"quality": 85, "optimize": True, "progressive": False}
VARIANT_JPEG = {"quality": 85, "optimize": True, "progressive": True}
# Up to this many pixels (a 3000 x 2000 photo), normalize makes every variant from the pixels it
# holds. A task of its own costs a variant a message, a hand-off to a pool process and a database
# transaction, ~5 ms of CPU, more than its reduced-scale decode saves on a small image: with
# a task per variant, 2 MP photos went through two pool processes at only 1.17x the images per
# second of one process making the same files in a loop (bench/images.py --photos small).
# Above it, a variant's reduced-scale decode (1/2 to 1/8 of the pixels) is cheaper than
# resizing the full image: on a 12 MP photo the `small` task took 30 ms, the same resize of the
# held pixels 61 ms.
IN_LINE_VARIANTS_MAX_PIXELS = 6_000_000
# thumbnail()'s two-step resize: integer reduce() until the LANCZOS pass is at most 3x, which
# Pillow documents as indistinguishable from a fair resampling in most cases.
REDUCING_GAP = 3.0


class ImageRejected(Exception):
    """Not an image we accept; the message is meant for the person who uploaded it."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class ImageBroken(Exception):
    """The file passed the header check but cannot be decoded (truncated, corrupt). Retrying
    cannot help; the upload fails with this reason."""


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int


def image_header_read(path: Path, *, max_pixels: int) -> ImageHeader:
    """Identify the format and size from the header alone: nothing is decoded, so a bomb that
    claims 25000 x 25000 pixels costs a few bytes of reading to refuse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=ACCEPTED_FORMATS) as image:
                header = ImageHeader(image.format, *image.size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as bomb:
        # Pillow's own check (MAX_IMAGE_PIXELS, set to our limit in media/apps.py) fired while
        # reading the header: the same refusal as ours below, from the same numbers.
        raise ImageRejected(
            f"The image has more than {max_pixels / 1e6:.0f} MP, the limit.", status=413
        ) from bomb
    except UnidentifiedImageError:
        header = None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(f"This file is not a readable image ({error}).", status=400) from error
    if header is None:
        raise ImageRejected(
            "Unsupported file type: upload a JPEG, PNG, WebP or GIF image.", status=415
        )
    if header.width * header.height > max_pixels:
        megapixels = header.width * header.height / 1e6
        raise ImageRejected(
            f"The image is {header.width}x{header.height} ({megapixels:.0f} MP); "
            f"the limit is {max_pixels / 1e6:.0f} MP.",
            status=413,
        )
    return header


def output_suffix(image: Image.Image) -> str:
    # Transparency needs PNG; everything else is a photo-like image, smallest as JPEG.
    return ".png" if image.mode == "RGBA" else ".jpg"


@dataclass(frozen=True)
class WrittenImage:
    path: Path
    width: int
    height: int


def image_normalize(source: Path, folder: Path) -> dict[str, WrittenImage]:
    """Upright, metadata-free, 8-bit RGB(A) re-encode of the source as `folder/original.*`,
    and, from the same pixels, the variants `variants_made_by_normalize` gives it. Returns what
    it wrote, by name ("original", then each variant's).

    EXIF orientation is applied to the pixels, then every piece of metadata (EXIF with its GPS
    position, XMP, ICC, comments) is dropped by re-encoding without it.
    """
    with _opened(source) as image:
        image.seek(0)  # first frame of an animation: variants are still images
        # In place: a 12 MP image is 48 MB of pixels, and a needless copy of it costs a third
        # of the CPU of decoding it (most of it faulting in fresh pages).
        ImageOps.exif_transpose(image, in_place=True)
        clean = _as_rgb_or_rgba(image)
        clean.info.clear()  # some encoders copy metadata from .info unless told otherwise
        written = {"original": _save_atomically(clean, folder / "original", ORIGINAL_JPEG)}
        for spec in variants_made_by_normalize(clean.size):
            written[spec.name] = _variant_write(clean, folder, spec)
        return written


def image_variant_make(original: Path, folder: Path, spec: VariantSpec) -> WrittenImage:
    """Resize the normalized original for one variant as `folder/<name>.*`, never upscaling.

    A JPEG original is decoded at a reduced scale (draft mode: libjpeg skips the work, so a
    thumb of a 12 MP photo decodes 1/64 of its pixels), the smallest scale still at least as
    large as the variant; `reducing_gap` then shrinks by integer factors before the final
    LANCZOS filter. The variant's size is computed from the full size, so it is the same
    whatever scale the decoder used.
    """
    with _open(original) as image:
        full_size = image.size
        scale = 1.0
        if image.format == "JPEG":
            # draft() answers with the full image's box at the scale it chose.
            drafted = image.draft("RGB", _decode_size_needed(full_size, spec))
            if drafted is not None:
                scale = full_size[0] / drafted[1][2]
        _decode(image)
        return _variant_write(image, folder, spec, full_size=full_size, scale=scale)


def variants_made_by_normalize(size: tuple[int, int]) -> tuple[VariantSpec, ...]:
    """The variants of a `size` image that normalize makes from the pixels it holds; the
    others are left to tasks of their own.

    Every variant of an image up to IN_LINE_VARIANTS_MAX_PIXELS: a task would cost it more
    than it saves. Of a larger one, the variants no reduced-scale decode can serve: in a task
    of its own, such a variant would decode the whole original again, a decode normalize has
    just paid for (a 2048 px variant of a 4000 px photo: 1/2 scale gives only 2000 px; the
    second decode was a sixth of the photo's CPU in bench/images.py). A 48 MP photo leaves all
    four to tasks of their own, each decoding at 1/2 scale or less. (An original with
    transparency is a PNG, which has no reduced-scale decode: its variants' tasks decode it
    whole.) The rule is symmetric in width and height, so the size as stored and as shown
    give the same answer.
    """
    if size[0] * size[1] <= IN_LINE_VARIANTS_MAX_PIXELS:
        return VARIANTS
    return tuple(spec for spec in VARIANTS if reduced_decode_scale(size, spec) == 1)


def reduced_decode_scale(size: tuple[int, int], spec: VariantSpec) -> int:
    """1, 2, 4 or 8: how many times smaller than `size` a JPEG decoder may decode the image
    and still hold every pixel the variant needs, as Pillow's JpegImageFile.draft() picks it
    (libjpeg's scaled IDCT offers 1/2, 1/4 and 1/8)."""
    needed = _decode_size_needed(size, spec)
    fits = min(full // need for full, need in zip(size, needed, strict=True))
    return next(scale for scale in (8, 4, 2, 1) if fits >= scale)


def _decode_size_needed(size: tuple[int, int], spec: VariantSpec) -> tuple[int, int]:
    # The whole image at the scale where the variant's region is as large as the variant.
    output, crop = _variant_geometry(size, spec)
    crop_width, crop_height = crop[2] - crop[0], crop[3] - crop[1]
    return (
        math.ceil(size[0] * output[0] / crop_width),
        math.ceil(size[1] * output[1] / crop_height),
    )


def _variant_write(
    image: Image.Image,
    folder: Path,
    spec: VariantSpec,
    *,
    full_size: tuple[int, int] | None = None,
    scale: float = 1.0,
) -> WrittenImage:
    """Resize `image` (the original, or the original decoded at 1/`scale` of `full_size`)
    for one variant and write it."""
    size, crop = _variant_geometry(full_size or image.size, spec)
    resized = image.resize(
        size,
        Image.Resampling.LANCZOS,
        box=tuple(edge / scale for edge in crop),
        reducing_gap=REDUCING_GAP,
    )
    return _save_atomically(resized, folder / spec.name, VARIANT_JPEG)


def _variant_geometry(
    size: tuple[int, int], spec: VariantSpec
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(output size, region of the source it shows): the centred square for a cropped
    variant, the whole image otherwise."""
    width, height = size
    if spec.square_crop:
        crop_side = min(width, height)
        side = min(spec.long_edge, crop_side)
        left, top = (width - crop_side) // 2, (height - crop_side) // 2
        return (side, side), (left, top, left + crop_side, top + crop_side)
    scale = min(1.0, spec.long_edge / max(width, height))
    output = (max(1, round(width * scale)), max(1, round(height * scale)))
    return output, (0, 0, width, height)


def _opened(path: Path) -> Image.Image:
    """Open and decode at full scale."""
    image = _open(path)
    _decode(image)
    return image


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path, formats=ACCEPTED_FORMATS)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as error:
        raise ImageBroken(f"The image could not be decoded: {error}") from error


def _decode(image: Image.Image) -> None:
    # Decode now, so a truncated or corrupt file fails here, clearly.
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        image.close()
        raise ImageBroken(f"The image could not be decoded: {error}") from error


def _as_rgb_or_rgba(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if image.mode == ("RGBA" if has_alpha else "RGB"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits before RGB (a plain convert would clip to white).
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    return image.convert("RGBA" if has_alpha else "RGB")


def _save_atomically(image: Image.Image, stem: Path, jpeg_options: dict) -> WrittenImage:
    """Write `stem` + the suffix its mode needs into a temporary file beside the destination,
    then rename: a worker killed mid-write never leaves half a file under the final name for the
    next step to read.

    Each run writes a temporary file of its own: two runs of one step at once (a redelivery
    racing the run it replaces) must not share one, or the second truncates the file the first
    is about to rename into place. A run holds a lock on its file while it writes; a file nobody
    holds a lock on was left by a run that died mid-write (the lock died with it), and the next
    run removes it, so nothing accumulates.
    """
    destination = stem.with_suffix(output_suffix(image))
    destination.parent.mkdir(parents=True, exist_ok=True)
    _abandoned_partials_remove(destination)
    partial, file = _partial_create(destination)
    try:
        with file:
            if destination.suffix == ".jpg":
                image.save(file, "JPEG", **jpeg_options)
            else:
                image.save(file, "PNG", optimize=False)
            file.flush()  # every byte in the file before it gets its final name
            os.replace(partial, destination)
    except BaseException:
        # Not in the way of the error that got here; what stays is removed by the next run.
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return WrittenImage(destination, image.width, image.height)


def _partial_create(destination: Path) -> tuple[Path, BinaryIO]:
    """A new temporary file for `destination`, locked for as long as it stays open."""
    while True:
        token = secrets.token_hex(8)
        partial = destination.with_name(f".{destination.stem}.{token}{destination.suffix}.partial")
        file = partial.open("xb")
        fcntl.flock(file, fcntl.LOCK_EX)
        if partial.exists():
            return partial, file
        # Another run's cleanup found it between its creation and the lock, and removed it.
        file.close()


def _abandoned_partials_remove(destination: Path) -> None:
    for partial in destination.parent.glob(f".{destination.stem}.*{destination.suffix}.partial"):
        try:
            with partial.open("rb") as file:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                partial.unlink()
        except (BlockingIOError, FileNotFoundError):
            continue  # a live run is writing it, or it is gone already

"""Image work, free of Django: inspect an upload, normalize it, make a variant.

Every function reads a path and writes a path; the same input always gives the same output
file, so a step that runs twice (a redelivered task) rewrites identical bytes.
"""

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

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


def image_normalize(source: Path, destination_stem: Path) -> tuple[Path, int, int]:
    """Upright, metadata-free, 8-bit RGB(A) re-encode of the source. Returns (path, w, h).

    EXIF orientation is applied to the pixels, then every piece of metadata (EXIF with its GPS
    position, XMP, ICC, comments) is dropped by re-encoding without it.
    """
    with _opened(source) as image:
        image.seek(0)  # first frame of an animation: variants are still images
        upright = ImageOps.exif_transpose(image)
        clean = _as_rgb_or_rgba(upright)
        clean.info.clear()  # some encoders copy metadata from .info unless told otherwise
        destination = destination_stem.with_suffix(output_suffix(clean))
        _save_atomically(clean, destination, jpeg_options=ORIGINAL_JPEG)
        return destination, clean.width, clean.height


def image_variant_make(
    original: Path, destination_stem: Path, spec: VariantSpec
) -> tuple[Path, int, int]:
    """Resize the normalized original for one variant, never upscaling. Returns (path, w, h).

    JPEG sources are decoded at a reduced scale (draft mode: libjpeg skips the work, so a thumb
    of a 12 MP photo decodes ~1/64 of its pixels) and `reducing_gap` shrinks by integer factors
    before the final filter: the same output as a full decode and resize, for a fraction of
    the CPU.
    """
    with _opened(original, fit_within=lambda size: _target_box(size, spec)) as image:
        box = _target_box(image.size, spec)
        if spec.square_crop:
            resized = ImageOps.fit(image, box, method=Image.Resampling.LANCZOS)
        else:
            resized = image.copy()
            resized.thumbnail(box, Image.Resampling.LANCZOS, reducing_gap=3.0)
        resized.info.clear()
        destination = destination_stem.with_suffix(output_suffix(resized))
        _save_atomically(resized, destination, jpeg_options=VARIANT_JPEG)
        return destination, resized.width, resized.height


def _target_box(size: tuple[int, int], spec: VariantSpec) -> tuple[int, int]:
    width, height = size
    if spec.square_crop:
        side = min(spec.long_edge, width, height)
        return side, side
    scale = min(1.0, spec.long_edge / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _opened(path: Path, *, fit_within=None):
    """Open and decode; with `fit_within(size) -> box`, a JPEG is decoded at the smallest
    scale still at least as large as the box (must be set before decoding)."""
    try:
        image = Image.open(path, formats=ACCEPTED_FORMATS)
        if fit_within is not None and image.format == "JPEG":
            image.draft("RGB", fit_within(image.size))
        image.load()  # decode now, so a truncated or corrupt file fails here, clearly
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as error:
        raise ImageBroken(f"The image could not be decoded: {error}") from error
    return image


def _as_rgb_or_rgba(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits before RGB (a plain convert would clip to white).
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    return image.convert("RGBA" if has_alpha else "RGB")


def _save_atomically(image: Image.Image, destination: Path, *, jpeg_options: dict) -> None:
    """Write beside the destination, then rename: a worker killed mid-write never leaves half
    a file under the final name for the next step to read.

    The partial file's name is fixed, not random, so the step's rerun writes over what the
    killed run left and renames it away: nothing accumulates. Two runs writing at once write
    the same bytes (the output is deterministic), so they cannot corrupt each other.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial")
    if destination.suffix == ".jpg":
        image.save(partial, "JPEG", **jpeg_options)
    else:
        image.save(partial, "PNG", optimize=False)
    os.replace(partial, destination)

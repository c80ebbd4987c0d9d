"""Image files the media tests upload or process, made in memory (no binary fixtures in git)."""

import io
import struct
import zlib

from PIL import Image, ImageCms

# A minimal XMP packet, as cameras and editors write it (creator and a location, say).
XMP_PACKET = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="Ada"/>'
    b'</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)
GPS_IFD = 0x8825


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def jpeg(width: int = 64, height: int = 48, **options) -> bytes:
    return encoded(Image.new("RGB", (width, height), (200, 40, 40)), "JPEG", **options)


def png(width: int = 64, height: int = 48, mode: str = "RGB") -> bytes:
    colour = (40, 200, 40, 255)[: len(mode)] if mode != "L" else 128
    return encoded(Image.new(mode, (width, height), colour), "PNG")


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Smooth, so it compresses to little but still costs its full size to decode and resize."""
    ramp = Image.linear_gradient("L").resize((width, height))
    bands = [
        ramp,
        ramp.transpose(Image.Transpose.ROTATE_180),
        ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    ]
    if mode == "RGBA":
        bands.append(ramp.point(lambda value: 128 + value // 2))
    return Image.merge(mode, bands)


def slow_png(width: int = 8000, height: int = 6000) -> bytes:
    """An RGBA 48 MP PNG of ~0.2 MB: its original stays a PNG (no JPEG draft decoding), so
    normalize takes seconds and each variant about as long, on a 2-core machine. Time enough
    to kill a pool process in the middle of a step."""
    return encoded(gradient(width, height, "RGBA"), "PNG")


def truncated_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A JPEG whose header (and so its size) is intact but whose scan data stops halfway."""
    whole = encoded(gradient(width, height), "JPEG", quality=90)
    return whole[: len(whole) // 2]


def png_claiming_size(width: int, height: int) -> bytes:
    """A few-byte PNG whose IHDR says `width` x `height` (a decompression bomb's header), with
    the chunk's CRC recomputed so a decoder finds nothing wrong with the header itself."""
    data = bytearray(png(1, 1))
    # Signature (8 bytes), then IHDR: length (4), type (4), width (4), height (4), ..., CRC.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def srgb_icc_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def jpeg_with_every_kind_of_metadata(width: int = 120, height: int = 90) -> bytes:
    """EXIF (with a GPS position), XMP, an ICC profile and a COM comment, all in one JPEG."""
    exif = Image.Exif()
    exif[GPS_IFD] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}
    exif[0x010F] = "PhoneMaker"  # Make
    return encoded(
        gradient(width, height),
        "JPEG",
        quality=90,
        exif=exif,
        xmp=XMP_PACKET,
        icc_profile=srgb_icc_profile(),
        comment=b"shot at home",
    )


def multipart_body(boundary: str, parts: list[tuple[str, str, bytes]]) -> bytes:
    """A multipart/form-data body of file parts (field name, file name, content)."""
    lines = []
    for field, filename, content in parts:
        lines.append(
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    return b"".join(lines) + f"--{boundary}--\r\n".encode()

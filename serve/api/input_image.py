"""The first frame a request brings (``input_reference``): an uploaded file or a data: URL.

Checked from the file's first bytes and its header before any pixel is decoded: the format
from its magic bytes (PNG, JPEG or WEBP), the pixel count from what ``PIL.Image.open``
reads (it parses the header only; ``.load()`` would decode). A 30000x30000 PNG of a few
kilobytes is refused here, before it could take gigabytes to decode. The full decode, which
catches truncated data, is engine.request_validation's, and runs off the event loop with it.

Only data: URLs are taken: the server fetches no URL a client names.
"""

from __future__ import annotations

import base64
import binascii
import io

from engine.request_validation import ACCEPTED_IMAGE_FORMATS
from serve.api.errors import APIError

PARAM = "input_reference"
MEDIA_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}

# First bytes of the accepted formats and of the common ones refused, so a refusal can say what it got.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
)


def image_format(data: bytes) -> str | None:
    """The format named by the file's magic bytes; None when it is none of those known here."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def image_from_data_url(url: str) -> bytes:
    """The bytes of ``data:image/png;base64,...`` (image/jpeg and image/webp too)."""
    scheme, colon, rest = url.partition(":")
    if not colon or scheme.strip().lower() != "data":
        raise _refused("input_reference.image_url: only data: URLs are accepted (data:image/png;base64,...); "
                       "this server fetches no URL")
    header, comma, payload = rest.partition(",")
    if not comma:
        raise _refused("input_reference.image_url: is not a data: URL (no ',' before the data)")
    media_type, *parameters = (part.strip().lower() for part in header.split(";"))
    if media_type not in MEDIA_TYPES:
        raise _refused(f"input_reference.image_url: the data: URL's type must be one of {', '.join(MEDIA_TYPES)} "
                       f"(got {media_type[:64] or 'none'!r})", code="invalid_image_format")
    if "base64" not in parameters:
        raise _refused("input_reference.image_url: the data: URL must be base64-encoded (data:image/png;base64,...)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _refused("input_reference.image_url: the data: URL's data is not valid base64") from None
    found = image_format(data)
    if found in ACCEPTED_IMAGE_FORMATS and found != MEDIA_TYPES[media_type]:
        raise _refused(f"input_reference.image_url: the data: URL says {media_type} but holds a {found} image",
                       code="invalid_image_format")
    return data


def check_image_header(data: bytes, max_pixels: int) -> None:
    """Refuse an image of another format, whose header does not parse, or with more than ``max_pixels``."""
    from PIL import Image

    found = image_format(data)
    if found not in ACCEPTED_IMAGE_FORMATS:
        *others, last = ACCEPTED_IMAGE_FORMATS
        got = found or "a file of no known image format"
        raise _refused(f"input_reference: must be a {', '.join(others)} or {last} image (got {got})",
                       code="invalid_image_format")
    try:
        # Only the plugin the magic bytes named may parse it; open() reads the header and no pixel.
        with Image.open(io.BytesIO(data), formats=[found]) as image:
            width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Raised by open() from the header's size (the warning too, where warnings are errors).
        raise _refused(f"input_reference: the image is too large to decode ({error})", code="image_too_large") from None
    except Image.UnidentifiedImageError:
        raise _refused(f"input_reference: is not a readable {found} image (its header does not parse)",
                       code="invalid_image") from None
    except Exception as error:  # whatever the decoder makes of garbage: OSError, SyntaxError, struct.error, ...
        raise _refused(f"input_reference: is not a readable {found} image ({type(error).__name__}: {error})",
                       code="invalid_image") from None
    if width * height > max_pixels:
        raise _refused(f"input_reference: the image is {width}x{height} = {width * height:,} pixels, over this "
                       f"server's limit of {max_pixels:,} (api.max_input_image_pixels)", code="image_too_large")


def _refused(message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=PARAM, code=code)

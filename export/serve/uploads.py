"""Reading what a client sends, bounded in bytes, time and pixels (both engines).

- A body is read chunk by chunk against its limit and a deadline, chunked or not, so a client
  that sends 1 GiB (or one byte every 2 s) costs at most the limit (or the deadline): 413 and
  408 in the protocol's JSON, and the connection is closed.
- A multipart form is parsed from that bounded body, in memory.
- An image's size is read from its header before any pixel is decoded: one above
  ``max_image_pixels`` (or a request whose images add up past ``image_budget`` pixels) is
  refused in milliseconds; the others are decoded one at a time per process (one worker
  thread), so concurrent uploads cannot multiply the memory, and large decodes hand their memory
  back to the system afterwards (``malloc_trim``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request

from ..core.errors import UserError
from ..data import read_image
from .protocol import ProtocolError, decompress

#: a camera photo (48 MP phone sensors included); a 9000 x 9000 PNG (81 MP) is refused
MAX_IMAGE_PIXELS = 50_000_000
#: the most bytes an image route reads (a few photos)
UPLOAD_LIMIT = 64 << 20
LINGER = 8 << 20  # bytes past a limit read and dropped so the client reads its 413
_DECODER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="decode")
_LARGE = 4_000_000  # pixels past which memory is handed back after decoding


@dataclass(frozen=True)
class Limits:
    """What one request may cost (``resnet-serve``'s hardening options)."""

    request_timeout: float = 5.0  # seconds to read a request's headers and body
    max_image_pixels: int = MAX_IMAGE_PIXELS
    image_budget: int = 4 * MAX_IMAGE_PIXELS  # pixels of all the images in one request
    upload_limit: int = UPLOAD_LIMIT
    allow_nonfinite: bool = False


async def _chunks(request: Request, limit: int) -> bytes:
    """The body, or 413 past ``limit``. A body up to :data:`LINGER` bytes past the limit is
    read to its end and dropped before the answer, so a client still sending it reads the 413
    instead of a broken pipe; a longer one is refused at once and its connection closed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + LINGER:
        raise ProtocolError(413, f"body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit + LINGER:
            break
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise ProtocolError(413, f"body exceeds the limit of {limit} bytes")
    return b"".join(chunks)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, inflated; 413 past ``limit`` bytes (before reading it all), 408 when
    it has not arrived within ``timeout`` seconds."""
    try:
        body = await asyncio.wait_for(_chunks(request, limit), timeout)
    except asyncio.TimeoutError:
        raise ProtocolError(408, f"the request body did not arrive within {timeout:g}s"
                            ) from None
    return decompress(body, request.headers.get("content-encoding"), limit)


async def read_files(request: Request, limits: Limits, max_files: int
                     ) -> list[tuple[str, bytes]]:
    """Image files: a multipart form's file fields, or one raw body, all within the limits."""
    body = await read_body(request, limits.upload_limit, limits.request_timeout)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return [("body", body)]
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form_request = Request(dict(request.scope, headers=[
        (k, v) for k, v in request.scope["headers"] if k != b"content-encoding"]), replay)
    try:
        form = await form_request.form(max_files=max_files, max_part_size=limits.upload_limit)
    except Exception as exc:
        raise ProtocolError(400, f"not a multipart form: {exc}") from None
    files = [(getattr(v, "filename", None) or k, await v.read())
             for k, v in form.multi_items() if hasattr(v, "read")]
    await form.close()
    if not files:
        raise ProtocolError(400, "the form holds no file")
    return files


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the image's header, decoding no pixel."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProtocolError(400, f"cannot read image {name}: {line}") from None


def check_pixels(files: list[tuple[str, bytes]], limits: Limits) -> None:
    """413 for an image above ``max_image_pixels`` or images adding up past the budget."""
    total = 0
    for name, data in files:
        width, height = image_size(data, name)
        if width * height > limits.max_image_pixels:
            raise ProtocolError(413, f"image {name} is {width}x{height} ({width * height:,} "
                                     f"pixels), above the limit of {limits.max_image_pixels:,}")
        total += width * height
    if total > limits.image_budget:
        raise ProtocolError(413, f"the request's images hold {total:,} pixels, above the "
                                 f"budget of {limits.image_budget:,} per request")


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        pass


def _decode(data: bytes, name: str) -> np.ndarray:
    """An uploaded image -> uint8 C x H x W through ``resnet-predict``'s own reader (EXIF
    orientation, 8-bit conversion), which reads regular files only: the bytes go through a
    private temporary file, and errors name the upload."""
    with tempfile.TemporaryDirectory(prefix="resnet-serve-") as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(data)
        try:
            return read_image(path)
        except UserError as exc:
            raise ProtocolError(400, str(exc).replace(str(path), name)) from None


def _decode_all(files: list[tuple[str, bytes]], prepare: Any) -> list[Any]:
    out, large = [], False
    for name, data in files:
        pixels = _decode(data, name)
        large |= pixels.shape[1] * pixels.shape[2] > _LARGE
        out.append(prepare(pixels))
        del pixels
    if large:
        _trim()
    return out


async def decode_images(files: list[tuple[str, bytes]], limits: Limits, prepare: Any
                        ) -> list[Any]:
    """``prepare(pixels)`` for each file's pixels, decoded one at a time in the decode worker
    after their sizes pass :func:`check_pixels`."""
    check_pixels(files, limits)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_DECODER, _decode_all, files, prepare)


__all__ = ["Limits", "MAX_IMAGE_PIXELS", "check_pixels", "decode_images", "read_body",
           "read_files"]

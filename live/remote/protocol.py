"""The wire protocol between ``mra-live --worker`` (client) and ``mra-serve`` (worker): typed messages.

One websocket binary message carries one message::

    4 bytes  big-endian length N of the header
    N bytes  header: UTF-8 JSON {"type": NAME, fields..., "blobs": [[field, kind, dtype, shape, nbytes], ...]}
    ...      the blobs, back to back: encoded images (JPEG / WebP / PNG bytes) and float32 arrays

Every message is a dataclass below; :func:`decode` checks the type name, every field's type and
every array's dtype and shape, and raises :class:`ProtocolError` on anything else, so a peer
never acts on a half-understood message. Images cross the wire compressed (:func:`encode_image`,
quality configurable); :func:`decode_image` reads only the header before deciding, so a small
file that claims a huge picture is refused before it is decompressed.

A session (one websocket connection): the client says :class:`Hello` (protocol version, token,
the model it expects, how it wants frames back); the worker answers :class:`Welcome` (its model
and limits) or a fatal :class:`Failure`. Then per avatar :class:`PrepareSource` ->
:class:`SourceReady` once, and per frame :class:`DetectRegions` -> :class:`RegionsFound` and
:class:`Animate` -> :class:`Animated` (plus :class:`Transfer` -> :class:`Transferred` in avd
mode). Requests carry an ``id`` that the reply repeats; a request that a newer one of the same
kind replaced before it ran is answered :class:`Superseded`.
"""
from __future__ import annotations

import dataclasses
import io
import ipaddress
import json
import os
import re
import struct
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.engine import RegionParams
from nets.errors import UserError

PROTOCOL_VERSION = 1
DEFAULT_PORT = 8765  # where mra-serve listens and mra-live --worker HOST looks, unless told otherwise
IMAGE_FORMATS = ("jpeg", "webp", "png")
MAX_REGIONS = 128
MAX_BATCH = 16
# The JSON header is checked before it is parsed: a real one is well under 4 KiB and nests 4 deep
# (message -> blob list -> blob entry -> shape); 200,000 '[' would otherwise exhaust the parser's
# recursion (a RecursionError, not a refusal).
MAX_HEADER_BYTES = 64 << 10
MAX_NESTING = 8


class ProtocolError(ValueError):
    """A message that does not follow the protocol (garbage, wrong types, bad arrays)."""


class FrameError(ValueError):
    """An image that is not a picture of the expected size and format."""


# ---------------------------------------------------------------------------------------------
# What the worker tells the client
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelInfo:
    """The worker's model: preset name, frame side, number of regions, AVD, the SHA-256 of its weights
    (of ``manifest.json`` for an ONNX export directory: the same digest means the same model) and
    a description of the engine that runs it."""

    config_name: str
    frame_size: int
    num_regions: int
    has_avd: bool
    sha256: str
    engine: str


@dataclass
class Limits:
    """What one session may send: bytes per message, frames per request, avatars kept, idle seconds."""

    max_message_bytes: int
    max_batch: int
    max_avatars: int
    idle_timeout_s: float


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------

@dataclass
class Hello:
    version: int
    token: str
    client: str
    reply_format: str = "jpeg"
    reply_quality: int = 90
    expect_config: "str | None" = None
    expect_sha256: "str | None" = None


@dataclass
class Welcome:
    version: int
    session: str
    model: ModelInfo
    limits: Limits


@dataclass
class PrepareSource:
    """A portrait (``frame_size`` square, any of :data:`IMAGE_FORMATS`) under the client's avatar number."""

    id: int
    avatar: int
    image: bytes


@dataclass
class SourceReady:
    id: int
    avatar: int
    regions: RegionParams


@dataclass
class DetectRegions:
    """Driving crops, one image each (batch B = len(images))."""

    id: int
    images: list[bytes]


@dataclass
class RegionsFound:
    id: int
    params: RegionParams


@dataclass
class Transfer:
    """Motion transfer on the worker (avd mode needs its AVD network)."""

    id: int
    avatar: int
    mode: str
    driving: RegionParams
    initial: "RegionParams | None" = None


@dataclass
class Transferred:
    id: int
    params: RegionParams


@dataclass
class Animate:
    id: int
    avatar: int
    params: RegionParams


@dataclass
class Animated:
    id: int
    images: list[bytes]


@dataclass
class Superseded:
    """The request ``id`` was dropped unrun: a newer request of the same kind replaced it."""

    id: int


@dataclass
class Failure:
    """An error: about request ``id`` (0: the session); ``fatal`` ends the session."""

    id: int
    code: str
    message: str
    fatal: bool = False


MESSAGES: dict[str, type] = {c.__name__: c for c in (Hello, Welcome, PrepareSource, SourceReady, DetectRegions,
                                                     RegionsFound, Transfer, Transferred, Animate, Animated,
                                                     Superseded, Failure)}
# what answers each request (besides Superseded and Failure)
REPLIES: dict[type, type] = {PrepareSource: SourceReady, DetectRegions: RegionsFound, Transfer: Transferred,
                             Animate: Animated}
# failure codes (one place for each)
BAD_MESSAGE, BAD_FRAME, BAD_TOKEN, VERSION, MODEL, FULL, UNKNOWN_AVATAR, ENGINE, IDLE = (
    "bad_message", "bad_frame", "bad_token", "version", "model", "full", "unknown_avatar", "engine", "idle")

_HEADER = struct.Struct(">I")
_NESTED = (ModelInfo, Limits)


def printable(text: str, limit: int = 400) -> str:
    """A peer's text made safe for a log or error line: at most ``limit`` characters (then ``...``),
    and every character that is not printable (newlines, ESC of terminal escapes, bidi controls)
    written as its escape (``\\n``, ``\\x1b``, ``\\u202e``), so a peer can neither forge a line nor
    drive the terminal."""
    cut = text[:limit]
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return out + ("..." if len(text) > limit else "")


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

def encode(msg) -> bytes:
    """A message dataclass -> one websocket binary message."""
    name = type(msg).__name__
    if MESSAGES.get(name) is not type(msg):
        raise TypeError(f"not a protocol message: {msg!r}")
    header: dict[str, typing.Any] = {"type": name}
    blobs: list[list] = []
    payload: list[bytes] = []

    def blob(key: str, kind: str, data: bytes, dtype: str = "", shape: "list[int] | None" = None) -> None:
        blobs.append([key, kind, dtype, shape or [], len(data)])
        payload.append(data)

    for f in dataclasses.fields(msg):
        v = getattr(msg, f.name)
        if isinstance(v, bytes):
            blob(f.name, "bytes", v)
        elif isinstance(v, list) and v and all(isinstance(x, bytes) for x in v):
            header[f.name] = len(v)
            for i, x in enumerate(v):
                blob(f"{f.name}.{i}", "bytes", x)
        elif isinstance(v, RegionParams):
            header[f.name] = [k for k in ("shift", "covar", "affine") if getattr(v, k) is not None]
            for k in header[f.name]:
                a = np.ascontiguousarray(getattr(v, k), dtype=np.float32)
                blob(f"{f.name}.{k}", "array", a.tobytes(), "float32", list(a.shape))
        elif isinstance(v, _NESTED):
            header[f.name] = dataclasses.asdict(v)
        else:
            header[f.name] = v
    header["blobs"] = blobs
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_HEADER.pack(len(head)), head, *payload])


# ---------------------------------------------------------------------------------------------
# Decoding (strict)
# ---------------------------------------------------------------------------------------------

def _check_scalar(name: str, value, hint) -> typing.Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str) and len(value) <= 4096
    elif hint in _NESTED:
        if not isinstance(value, dict):
            raise ProtocolError(f"{name}: expected an object")
        return _build(hint, value, {}, name)
    else:
        raise ProtocolError(f"{name}: unsupported field type")
    if not ok:
        raise ProtocolError(f"{name}: expected {getattr(hint, '__name__', hint)}, got {type(value).__name__}")
    return value


def _build(cls: type, values: dict, blobs: dict, where: str):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        key = f"{where}.{f.name}"
        if hint is bytes:
            if f.name not in blobs:
                raise ProtocolError(f"{key}: missing")
            kwargs[f.name] = blobs[f.name]
        elif hint == list[bytes]:
            n = values.get(f.name)
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_BATCH:
                raise ProtocolError(f"{key}: expected 1 to {MAX_BATCH} images")
            try:
                kwargs[f.name] = [blobs[f"{f.name}.{i}"] for i in range(n)]
            except KeyError:
                raise ProtocolError(f"{key}: missing images") from None
        elif RegionParams in (hint, *typing.get_args(hint)):
            present = values.get(f.name)
            if present is None and type(None) in typing.get_args(hint):
                kwargs[f.name] = None
                continue
            kwargs[f.name] = _params(key, present, blobs, f.name)
        elif f.name in values:
            kwargs[f.name] = _check_scalar(key, values[f.name], hint)
        elif f.default is not dataclasses.MISSING:
            kwargs[f.name] = f.default
        else:
            raise ProtocolError(f"{key}: missing")
    extra = set(values) - {f.name for f in dataclasses.fields(cls)} - {"type", "blobs"}
    if extra:
        raise ProtocolError(f"{where}: unknown field(s) {', '.join(sorted(extra))[:200]}")
    return cls(**kwargs)


def _params(key: str, present, blobs: dict, name: str) -> RegionParams:
    if not isinstance(present, list) or "shift" not in present or not set(present) <= {"shift", "covar", "affine"}:
        raise ProtocolError(f"{key}: expected region parameters with a shift")
    arrays = {}
    for k in present:
        a = blobs.get(f"{name}.{k}")
        if not isinstance(a, np.ndarray):
            raise ProtocolError(f"{key}.{k}: missing array")
        arrays[k] = a
    shift = arrays["shift"]
    if shift.ndim != 3 or shift.shape[2] != 2 or not 1 <= shift.shape[0] <= MAX_BATCH or \
            not 1 <= shift.shape[1] <= MAX_REGIONS:
        raise ProtocolError(f"{key}.shift: expected (B, K, 2), got {shift.shape}")
    for k in ("covar", "affine"):
        if k in arrays and arrays[k].shape != shift.shape[:2] + (2, 2):
            raise ProtocolError(f"{key}.{k}: expected {shift.shape[:2] + (2, 2)}, got {arrays[k].shape}")
    for k, a in arrays.items():
        if not np.isfinite(a).all():
            raise ProtocolError(f"{key}.{k}: not finite")
    return RegionParams(shift=arrays["shift"], covar=arrays.get("covar"), affine=arrays.get("affine"))


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_JSON_BRACKET = re.compile(r"[][{}]")


def _nesting_ok(text: str) -> bool:
    """True when the arrays and objects of JSON ``text`` nest at most :data:`MAX_NESTING` deep (strings
    skipped; the scan stops at the first level too deep, so a hostile header costs little)."""
    depth = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > MAX_NESTING:
            return False
    return True


def decode(data) -> typing.Any:
    """One websocket message -> a message dataclass; :class:`ProtocolError` for anything else (no other
    exception leaves it, whatever the bytes: both ends count on that)."""
    try:
        return _decode(data)
    except ProtocolError:
        raise
    except Exception as e:  # a case the checks below missed is still a refusal, never a crash
        raise ProtocolError(f"malformed message ({type(e).__name__})") from None


def _decode(data) -> typing.Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("expected a binary message")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise ProtocolError("message too short")
    (n,) = _HEADER.unpack_from(data)
    if n > len(data) - _HEADER.size:
        raise ProtocolError("bad header length")
    if n > MAX_HEADER_BYTES:
        raise ProtocolError(f"header over {MAX_HEADER_BYTES >> 10} KiB")
    try:
        text = data[_HEADER.size:_HEADER.size + n].decode()
    except UnicodeDecodeError:
        raise ProtocolError("header is not UTF-8") from None
    if not _nesting_ok(text):
        raise ProtocolError(f"header nested more than {MAX_NESTING} deep")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("header is not JSON") from None
    kind = header.get("type") if isinstance(header, dict) else None
    if not isinstance(kind, str) or kind not in MESSAGES:
        raise ProtocolError(f"unknown message type {str(kind)[:40]!r}")
    cls = MESSAGES[header["type"]]
    spec = header.get("blobs", [])
    if not isinstance(spec, list) or len(spec) > 3 * MAX_BATCH + 8:
        raise ProtocolError("bad blob list")
    blobs: dict[str, typing.Any] = {}
    pos = _HEADER.size + n
    for item in spec:
        if not (isinstance(item, list) and len(item) == 5 and isinstance(item[0], str) and item[1] in ("bytes", "array")
                and isinstance(item[4], int) and 0 <= item[4] <= len(data) - pos):
            raise ProtocolError("bad blob entry")
        key, kind, dtype, shape, size = item
        raw = data[pos:pos + size]
        pos += size
        if kind == "bytes":
            blobs[key] = raw
            continue
        if dtype != "float32" or not isinstance(shape, list) or len(shape) > 4 or \
                not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 4096 for s in shape) or \
                int(np.prod(shape)) * 4 != size:
            raise ProtocolError(f"bad array {key[:40]!r}")
        blobs[key] = np.frombuffer(raw, dtype="<f4").reshape(shape).copy()
    if pos != len(data):
        raise ProtocolError("trailing bytes")
    return _build(cls, header, blobs, cls.__name__)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}


def encode_image(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """uint8 ``(H, W, 3)`` -> JPEG / WebP (``quality`` 1-100) or PNG (lossless) bytes."""
    from PIL import Image

    if fmt not in _PIL_FORMAT:
        raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {fmt!r}")
    buf = io.BytesIO()
    options = {"compress_level": 1} if fmt == "png" else {"quality": int(quality)}
    if fmt == "webp":
        options["method"] = 0  # fastest
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format=_PIL_FORMAT[fmt], **options)
    return buf.getvalue()


def decode_image(data: bytes, side: int) -> np.ndarray:
    """JPEG / WebP / PNG bytes of a ``side`` x ``side`` picture -> uint8 ``(side, side, 3)``; FrameError
    otherwise (the size is read from the header, before anything is decompressed)."""
    from nets import media

    try:
        return media.decode_image_bytes(data, (side, side), exact=True)
    except media.ImageBytesError as e:
        raise FrameError(str(e)) from None


@dataclass
class ImageCodec:
    """How frames cross the wire: ``fmt`` (jpeg | webp | png) and ``quality`` (1-100, lossy formats)."""

    fmt: str = "jpeg"
    quality: int = 90

    def __post_init__(self):
        if self.fmt not in IMAGE_FORMATS:
            raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {self.fmt!r}")
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"image quality must be between 1 and 100, got {self.quality}")

    def encode(self, rgb: np.ndarray) -> bytes:
        return encode_image(rgb, self.fmt, self.quality)


# ---------------------------------------------------------------------------------------------
# What both ends check: the model's identity, the token
# ---------------------------------------------------------------------------------------------

def model_digest(checkpoint: "str | os.PathLike | None") -> str:
    """SHA-256 of the weights (``manifest.json`` of an export directory; the shipped model's checksum file)."""
    from nets.checkpoint import sha256_file

    from ..default_model import default_checkpoint

    if checkpoint is None:
        path = default_checkpoint()
        return path.with_suffix(".sha256").read_text().split()[0].strip().lower()
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = path / "manifest.json"
    return sha256_file(path)


def is_loopback(host: str) -> bool:
    """Whether an address to listen on is this machine only (``localhost``, ``127.x.x.x``, ``::1``,
    ``[::1]``): the servers ask for a token (mra-serve) or warn (mra-web) for any other."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    try:
        token = path.expanduser().read_text().strip()
    except OSError as e:
        raise UserError(f"cannot read the token file {path}: {e.strerror or e}") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise UserError(f"the token in {path} must be one line of at least 16 characters without spaces; make one "
                        "with: python -c \"import secrets; print(secrets.token_urlsafe(32))\" > token.txt")
    return token

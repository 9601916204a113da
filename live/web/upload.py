"""mra-web uploads: a streamed multipart/form-data body, size-limited, written into a job's folder."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from nets.errors import UserError

MB = 1024 * 1024
FIELD_LIMIT = 4096  # bytes of a plain form field (mode, crop, example)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def error_text(e: BaseException, hide: Sequence[Path] = ()) -> str:
    """The page's one-line message for a user-fixable error: ``error: ...`` as mra-animate prints it.

    Upload folders are private to the server: a path inside one is shown as the bare file name
    (what mra-animate prints when run next to the files)."""
    msg = one_line(e)
    for folder in hide:
        msg = msg.replace(str(folder) + os.sep, "")
    return f"error: {msg}"


def server_disk_text(e: BaseException) -> str:
    """The page's line for a write the server's disk refused (full, read-only...): no server paths."""
    from nets.errors import DISK_FAULTS
    happened = DISK_FAULTS.get(getattr(e, "errno", None), ("it cannot be written", ""))[0]
    return (f"error: the server cannot store files ({happened}); try again later, or ask whoever runs mra-web to "
            "free space or choose another --workdir")


def safe_name(name: str, default: str = "upload") -> str:
    """An uploaded file's name reduced to a harmless base name (extension kept, at most 100 chars)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^\w.\- ]+", "_", base, flags=re.ASCII).strip(" .") or default
    if len(base) > 100:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: 100 - len(ext) - 1] + "." + ext) if dot and len(ext) <= 10 else base[:100]
    return base


class UploadTooLarge(UserError):
    """An uploaded file is over ``--max-upload-mb`` (HTTP 413)."""


def limit_text(limit: int) -> str:
    return f"{limit / MB:g} MB"


async def receive_form(request, folder: Path, limit: int, files: "dict[str, str]") -> "tuple[dict[str, str], dict[str, Path]]":
    """Stream a multipart form into ``folder``: ``(fields, {name: saved path})``.

    ``files`` maps the accepted file fields to how messages name them (``{"source": "source
    image"}``); each file goes to ``folder/<field>/<safe name>`` and may be at most ``limit`` bytes.
    A file over the limit raises :class:`UploadTooLarge` after the rest of the body was read and
    discarded (so the browser sees the answer rather than a reset connection); bodies over the
    hard bound of every file at the limit plus 1 MB are refused from their Content-Length.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UserError("the request is not a form upload (multipart/form-data)")
    bound = len(files) * limit + MB
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > bound:
        raise UploadTooLarge(f"the upload is {int(length) / MB:.1f} MB, over the limit of {limit_text(limit)} per file; "
                             "use smaller files (or start mra-web with a higher --max-upload-mb)")
    fields: dict[str, str] = {}
    saved: dict[str, Path] = {}
    st = {"headers": {}, "hname": b"", "hvalue": b"", "name": None, "file": None, "path": None, "size": 0,
          "value": bytearray(), "error": None}

    def on_part_begin():
        st.update(headers={}, hname=b"", hvalue=b"", name=None, file=None, path=None, size=0, value=bytearray())

    def on_header_field(data, start, end):
        st["hname"] += data[start:end]

    def on_header_value(data, start, end):
        st["hvalue"] += data[start:end]

    def on_header_end():
        st["headers"][st["hname"].decode("latin-1").lower()] = st["hvalue"]
        st["hname"], st["hvalue"] = b"", b""

    def on_headers_finished():
        _, opts = parse_options_header(st["headers"].get("content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        st["name"] = name
        filename = opts.get(b"filename")
        if filename and name in files and name not in saved:  # (an empty filename: no file was chosen)
            sub = folder / name
            sub.mkdir(parents=True, exist_ok=True)
            path = sub / safe_name(filename.decode("utf-8", "replace"))
            st["path"] = path
            st["file"] = open(path, "wb")

    def on_part_data(data, start, end):
        n = end - start
        st["size"] += n
        if st["file"] is not None:
            if st["size"] > limit:
                if st["error"] is None:
                    st["error"] = UploadTooLarge(
                        f"the {files[st['name']]} {st['path'].name} is larger than the upload limit of "
                        f"{limit_text(limit)}; use a smaller file (or start mra-web with a higher --max-upload-mb)")
                st["file"].close()
                st["file"] = None
                st["path"].unlink(missing_ok=True)
                return
            st["file"].write(data[start:end])
        elif st["path"] is None and st["name"] not in files and len(st["value"]) < FIELD_LIMIT:
            st["value"] += data[start:end]

    def on_part_end():
        if st["file"] is not None:
            st["file"].close()
            saved[st["name"]] = st["path"]
        elif st["path"] is None and st["name"] and st["name"] not in files:
            fields[st["name"]] = bytes(st["value"][:FIELD_LIMIT]).decode("utf-8", "replace")
        st["file"] = None

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > bound:
                raise UploadTooLarge(f"the upload is over the limit of {limit_text(limit)} per file; use smaller files "
                                     "(or start mra-web with a higher --max-upload-mb)")
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except UploadTooLarge:
        raise
    except OSError as e:
        from nets.errors import DISK_FAULTS, DiskFault
        if e.errno in DISK_FAULTS:
            raise DiskFault(f"cannot store the upload in {folder}: {e.strerror}", e.errno) from None
        raise
    except Exception as e:  # a malformed body: python-multipart's own errors
        if st["error"] is None:
            raise UserError(f"the upload could not be read ({one_line(e)[:120]}); try again") from None
    finally:
        if st["file"] is not None:
            st["file"].close()
    if st["error"] is not None:
        raise st["error"]
    return fields, saved

"""Media input and output (and where the face is) for every layer that reads pictures (the tools, training data, int8
calibration, benchmarks): images, streamed video frames, atomic outputs, and the one conversion
between uint8 frames and the networks' float input.

Reading
    :func:`read_image` -> ``(H, W, 3)`` uint8 RGB: PNG / JPEG / WebP / BMP (and TIFF), grayscale,
    RGBA / LA / palette with transparency (composited on white), 16-bit, EXIF orientation applied,
    very large photos downscaled while decoding (JPEG ``draft``) and then to ``max_side``.
    :func:`probe_video` -> :class:`VideoInfo` (and proof that a first frame decodes);
    :class:`VideoReader` streams :class:`Frame` s (time in seconds from the first frame, RGB array),
    one at a time: a video is never read into memory. :func:`resample` turns timestamped frames
    into a constant-rate sequence (nearest frame to each output tick), so audio stays in sync for
    variable-rate inputs and ``--fps`` changes the rate without changing the duration.

Writing
    :func:`check_output` validates an output path early (kind from the name, folder exists and is
    writable); :func:`open_writer` returns a :class:`FrameWriter` for ``.mp4`` (H.264 yuv420p via
    PyAV, the driving video's audio carried over by :class:`AudioCarrier`), ``.gif`` or a directory
    of lossless numbered PNGs. Every writer writes to a temporary name in the target folder and
    renames at :meth:`FrameWriter.close`; :meth:`FrameWriter.abort` (any exception, Ctrl-C)
    removes the temporary, so an existing output is never clobbered by a failed run.

Conversion
    :func:`to_input` ``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` float32 in [0, 1];
    :func:`to_uint8` back (clipped, rounded).

Every problem the user can fix raises :class:`nets.errors.UserError` with a message that says what
to do.

Modules (one per section; this package exports their public names, so ``from nets import media``
then ``media.read_image`` works as before)
    :mod:`.files` (extensions, input checks), :mod:`.convert` (frames <-> tensors), :mod:`.images`,
    :mod:`.video` (input), :mod:`.outputs` (atomic outputs and writers), :mod:`.audio`, and
    :mod:`.face` (face detection, tracking and crops; imported on its own: ``nets.media.face``).

None of them imports the networks (nets.model, nets.generator, ...): training, export, the tools
and the benchmarks all stand on this layer (an import-linter contract in pyproject.toml checks it).
"""
from .files import (  # noqa: F401
    IMAGE_EXTS, VIDEO_EXTS, IMAGE_HINT, VIDEO_HINT, check_input_file, short_error, pyav)
from .convert import (  # noqa: F401
    to_input, to_uint8)
from .images import (  # noqa: F401
    DEFAULT_MAX_IMAGE_SIDE, MAX_DECODED_PIXELS, image_to_rgb, read_image, resize_rgb, BYTES_FORMATS, ImageBytesError,
    ImageSizeError, check_image_bytes, decode_image_bytes)
from .video import (  # noqa: F401
    MAX_FPS, FALLBACK_FPS, VIDEO_DEMUXERS, VideoInfo, Frame, probe_video, VideoReader, resample)
from .outputs import (  # noqa: F401
    OUTPUT_KINDS, STALE_AFTER_S, PNG_PATTERN, OutputSpec, output_kind, check_writable, check_output,
    sweep_stale, sweep_partials, temp_name, even_size, written_size, ResultKept, FrameWriter, PngDirWriter, video_encoder, Mp4Writer,
    GifWriter, open_writer)
from .audio import (  # noqa: F401
    AudioCarrier)

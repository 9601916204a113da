"""mra-serve and mra-live --worker on loopback: protocol, sessions, batching, reconnection, bad input."""
import asyncio
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import nets
from export.engine import EngineUnavailable
from export.torch_engine import TorchEngine
from live.remote import protocol as wp
from live.loop.capture import IteratorSource
from live.loop.pipeline import Avatars, CenterCropper, LiveOptions, LivePipeline
from live.serve import ServeOptions, Worker, model_info
from live.remote.client import Backoff, RemoteEngine, WorkerError, WorkerSpec, worker_url

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "correct-horse-battery-staple-42"


@pytest.fixture(scope="module")
def engine():
    return TorchEngine(nets.build_model("tiny").eval())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "tiny.pth"
    nets.save_model(nets.build_model("tiny").eval(), path)
    return path


def start_worker(engine, checkpoint, **options) -> Worker:
    return Worker(engine, model_info(engine, checkpoint), ServeOptions(port=0, **options)).start_thread()


@pytest.fixture()
def worker(engine, checkpoint):
    w = start_worker(engine, checkpoint, token=TOKEN, batch_window_ms=200)
    yield w
    w.join()


def portrait(seed: int, size: int = 64) -> np.ndarray:
    """A drawn portrait (1, 3, S, S) on the 8-bit grid, so PNG round trips are exact."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img[..., 0], img[..., 1], img[..., 2] = xx, yy, rng.random()
    img[size // 4: 3 * size // 4, size // 3: 2 * size // 3] = rng.random(3)
    return (np.round(img * 255) / 255).transpose(2, 0, 1)[None].astype(np.float32)


def moving_frames(n, h=96, w=128):
    def gen():
        for i in range(n):
            img = np.full((h, w, 3), 60, np.uint8)
            x = 30 + int(20 * np.sin(i / 5))
            img[20:80, x:x + 50] = (220, 160, 120)
            yield img
    return gen


def remote(worker, **kw) -> RemoteEngine:
    kw.setdefault("image_format", "png")
    return RemoteEngine(WorkerSpec(f"127.0.0.1:{worker.port}", kw.pop("token", TOKEN), **kw), log=lambda s: None)


# -- protocol ---------------------------------------------------------------------------------------

def test_messages_round_trip_and_garbage_is_refused():
    from export.engine import RegionParams
    p = RegionParams(shift=np.random.rand(2, 5, 2).astype(np.float32), covar=np.random.rand(2, 5, 2, 2).astype(np.float32),
                     affine=np.random.rand(2, 5, 2, 2).astype(np.float32))
    for msg in (wp.Hello(1, "t", "c", "webp", 70, "vox256", None), wp.Animate(7, 2, p), wp.Animated(7, [b"a", b"bc"]),
                wp.Transfer(3, 1, "avd", p, None), wp.Failure(0, wp.IDLE, "bye", True)):
        back = wp.decode(wp.encode(msg))
        assert type(back) is type(msg) and wp.encode(back) == wp.encode(msg)
    good = wp.encode(wp.Animate(7, 2, p))
    bad = [b"", b"\x00\x00\x00\x09{\"type\":1", good[:-4], good + b"x", "text",
           wp.encode(wp.Animate(7, 2, p)).replace(b'"avatar":2', b'"avatar":"2"'),
           wp.encode(wp.Animate(7, 2, p)).replace(b'"Animate"', b'"Explode"')]
    for raw in bad:
        with pytest.raises(wp.ProtocolError):
            wp.decode(raw)
    nan = RegionParams(shift=np.full((1, 5, 2), np.nan, np.float32))
    with pytest.raises(wp.ProtocolError, match="finite"):
        wp.decode(wp.encode(wp.Animate(1, 1, nan)))


def _raw(header: bytes) -> bytes:
    """A message with this header and no blobs (garbage of any shape)."""
    import struct
    return struct.pack(">I", len(header)) + header


def test_any_malformed_message_is_a_protocol_error_even_deeply_nested_json():
    """issue 21 item 5: decode raises ProtocolError and nothing else, whatever the bytes."""
    for raw in (_raw(b"[" * 200_000), _raw(b"{\"a\":" * 50_000), _raw(b'{"type":[]}'), _raw(b'{"type":{}}'),
                _raw(b'{"type":"Animate","blobs":' + b"[" * 9 + b"]" * 9 + b"}"), _raw(b" " * (65 << 10)),
                _raw(b'{"type":"Failure","id":' + b"9" * 5000 + b"}")):
        with pytest.raises(wp.ProtocolError):
            wp.decode(raw)
    # brackets inside strings are not nesting: a long client name full of them still decodes
    hello = wp.Hello(wp.PROTOCOL_VERSION, "t", "[{" * 2000)
    assert wp.decode(wp.encode(hello)) == hello


def test_images_are_compressed_and_checked_before_decoding():
    rgb = (portrait(0, 128)[0].transpose(1, 2, 0) * 255).astype(np.uint8)
    jpeg = wp.encode_image(rgb, "jpeg", 90)
    assert len(jpeg) < rgb.nbytes / 5
    assert np.abs(wp.decode_image(jpeg, 128).astype(int) - rgb).mean() < 3
    assert np.array_equal(wp.decode_image(wp.encode_image(rgb, "png"), 128), rgb)
    assert len(wp.encode_image(rgb, "jpeg", 30)) < len(jpeg)
    with pytest.raises(wp.FrameError, match="expected a 64x64"):
        wp.decode_image(jpeg, 64)
    with pytest.raises(wp.FrameError):
        wp.decode_image(b"GIF89a garbage", 128)


def test_worker_address_forms():
    assert worker_url("gpu:9000") == "ws://gpu:9000/"
    assert worker_url("gpu") == "ws://gpu:8765/"
    assert worker_url("wss://gpu.example.org:443/mra") == "wss://gpu.example.org:443/mra"
    from nets.errors import UserError
    with pytest.raises(UserError):
        worker_url("http://gpu:80")


# -- sessions ----------------------------------------------------------------------------------------

def test_remote_engine_matches_the_local_engine(engine, worker):
    r = remote(worker)
    try:
        assert (r.frame_size, r.num_regions, r.config_name) == (engine.frame_size, engine.num_regions, "tiny")
        src, drv = portrait(1), portrait(2)
        av, lav = r.prepare_source(src), engine.prepare_source(src)
        assert np.allclose(av.regions.shift, lav.regions.shift, atol=1e-6)
        p, lp = r.regions(drv), engine.regions(drv)
        assert np.allclose(p.affine, lp.affine, atol=1e-5)
        for mode in ("relative", "standard", "avd"):
            new, lnew = r.transfer(av, p, p, mode), engine.transfer(lav, lp, lp, mode)
            assert np.allclose(new.shift, lnew.shift, atol=1e-5), mode
        out, lout = r.animate(av, new), engine.animate(lav, lnew)
        assert out.shape == lout.shape and np.abs(out - lout).max() <= 1 / 255 + 1e-6  # PNG: 8-bit rounding only
    finally:
        r.close()


def test_a_session_end_to_end_with_a_file_camera(worker, checkpoint, tmp_path):
    """mra-live --worker: a video file as the camera, a file sink, stats; the worker does the networks."""
    import av
    from PIL import Image
    src = tmp_path / "portrait.png"
    Image.fromarray((portrait(3, 96)[0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(src)
    cam = tmp_path / "camera.mp4"
    with av.open(str(cam), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        for f in moving_frames(60)():
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    token = tmp_path / "token.txt"
    token.write_text(TOKEN + "\n")
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    r = subprocess.run([sys.executable, "-m", "live.live", *map(str, ["--source", src, "--camera", cam, "--output", out,
                        "--crop", "none", "--max-frames", 20, "--stats", stats, "--output-size", 96, "--quiet",
                        "--worker", f"127.0.0.1:{worker.port}", "--token-file", token, "--worker-quality", 80])],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json
    s = json.loads(stats.read_text())
    assert s["frames_out"] == 20 and "remote engine" in s["engine"] and "jpeg q80" in s["engine"]
    assert s["latency_ms_all"]["p50"] > 0 and "regions" in s["stages"]
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 20
    assert worker.batcher.stats.frames["animate"] >= 20


def test_two_clients_at_once_get_their_own_portraits(engine, worker):
    clients = [remote(worker), remote(worker)]
    sources = [portrait(10), portrait(11)]
    drv = portrait(12)
    results: dict[int, list] = {0: [], 1: []}
    together = threading.Barrier(2)  # both clients send each request at about the same time

    def run(i):
        r = clients[i]
        av = r.prepare_source(sources[i])
        p = r.regions(drv)
        for _ in range(6):
            together.wait(60)
            new = r.transfer(av, r.regions(drv), p, "relative")
            together.wait(60)
            results[i].append(r.animate(av, new))

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        lp = engine.regions(drv)
        for i in (0, 1):
            lav = engine.prepare_source(sources[i])
            expected = engine.animate(lav, engine.transfer(lav, lp, lp, "relative"))
            other = engine.animate(engine.prepare_source(sources[1 - i]), engine.transfer(lav, lp, lp, "relative"))
            assert len(results[i]) == 6
            for out in results[i]:
                assert np.abs(out - expected).max() <= 1 / 255 + 1e-5
                assert np.abs(out - other).mean() > 0.02
        st = worker.batcher.stats  # the two sessions' frames ran as batches of two
        assert st.mean_batch("animate") > 1.3 and st.mean_batch("regions") > 1.3
    finally:
        for r in clients:
            r.close()


# -- bad input ---------------------------------------------------------------------------------------

async def _raw_session(port, token, *sends, expect_close=False):
    """Say Hello, then send each item raw; return the decoded replies (or the close code)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
    replies = []
    async with connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None) as ws:
        await ws.send(wp.encode(wp.Hello(wp.PROTOCOL_VERSION, token, "test")))
        replies.append(wp.decode(await ws.recv()))
        try:
            for raw in sends:
                await ws.send(raw)
                replies.append(wp.decode(await asyncio.wait_for(ws.recv(), 30)))
        except ConnectionClosed as e:
            replies.append(("closed", e.rcvd.code if e.rcvd else None))
    return replies


def test_bad_token_garbage_and_oversized_frames_are_refused_and_the_worker_keeps_serving(worker):
    from nets.errors import UserError
    with pytest.raises(WorkerError, match="refused the token") as e:
        remote(worker, token="wrong-token-wrong-token")
    assert isinstance(e.value, UserError)
    with pytest.raises(WorkerError, match="runs tiny, the client expects vox256"):
        remote(worker, expect_config="vox256")
    with pytest.raises(WorkerError, match="another model"):
        remote(worker, expect_sha256="0" * 64)

    # garbage: answered with a Failure, three strikes close the session
    replies = asyncio.run(_raw_session(worker.port, TOKEN, b"\x00\x01garbage", "text", b"\xff" * 10))
    assert isinstance(replies[0], wp.Welcome)
    assert [r.code for r in replies[1:3]] == [wp.BAD_MESSAGE, wp.BAD_MESSAGE] and not replies[2].fatal
    assert replies[3].fatal and replies[3].code == wp.BAD_MESSAGE

    # a frame of the wrong size (small file, huge picture), one that is not an image, a message over the limit
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8000, 8000)).save(buf, format="JPEG", quality=1)
    replies = asyncio.run(_raw_session(worker.port, TOKEN, wp.encode(wp.DetectRegions(1, [buf.getvalue()])),
                                       wp.encode(wp.DetectRegions(2, [b"not a picture"])),
                                       wp.encode(wp.DetectRegions(3, [b"x" * (3 << 20)]))))
    assert replies[1].code == wp.BAD_FRAME and "expected a 64x64 image, got 8000x8000" in replies[1].message
    assert replies[2].code == wp.BAD_FRAME and replies[2].id == 2
    assert replies[3] == ("closed", 1009)  # message too big: that connection closes

    # another session's avatars are out of reach (numbers are per session)
    a = remote(worker)
    try:
        a.prepare_source(portrait(5))
        replies = asyncio.run(_raw_session(worker.port, TOKEN, wp.encode(wp.Animate(1, 1, a.regions(portrait(6))))))
        assert replies[1].code == wp.UNKNOWN_AVATAR
        # a wrong protocol version gets one clear failure
        async def old_client():
            from websockets.asyncio.client import connect
            async with connect(f"ws://127.0.0.1:{worker.port}") as ws:
                await ws.send(wp.encode(wp.Hello(99, TOKEN, "old")))
                return wp.decode(await ws.recv())
        f = asyncio.run(old_client())
        assert f.code == wp.VERSION and f.fatal and "same mra-live version" in f.message
        # and the worker still serves
        av = a.prepare_source(portrait(7))
        assert a.animate(av, a.transfer(av, a.regions(portrait(8)), a.regions(portrait(8)), "relative")).shape == \
            (1, 3, 64, 64)
    finally:
        a.close()


def test_deeply_nested_json_is_a_strike_not_a_crash(worker):
    """issue 21 item 5: 200,000 '[' gave a RecursionError traceback and close 1011, no Failure, no strike."""
    replies = asyncio.run(_raw_session(worker.port, TOKEN, _raw(b"[" * 60_000), _raw(b'{"type":[]}'),
                                       _raw(b"[" * 200_000)))
    assert isinstance(replies[0], wp.Welcome)
    assert [(r.code, r.fatal) for r in replies[1:]] == [(wp.BAD_MESSAGE, False), (wp.BAD_MESSAGE, False),
                                                        (wp.BAD_MESSAGE, True)]  # three strikes
    assert [m.message for m in replies[1:]] == ["bad message: header nested more than 8 deep",
                                                "bad message: unknown message type '[]'",
                                                "bad message: header over 64 KiB"]


def test_a_message_only_a_worker_sends_is_refused(worker):
    """The worker answers the four requests of the protocol and refuses any other message (not a strike)."""
    replies = asyncio.run(_raw_session(worker.port, TOKEN, wp.encode(wp.Superseded(4)),
                                       wp.encode(wp.Failure(5, wp.ENGINE, "?"))))
    assert [(r.id, r.code, r.message, r.fatal) for r in replies[1:]] == [
        (4, wp.BAD_MESSAGE, "a client does not send Superseded", False),
        (5, wp.BAD_MESSAGE, "a client does not send Failure", False)]


def test_a_malformed_reply_makes_the_client_reconnect():
    """issue 21 item 5: the client's receive task reconnects after any malformed reply (it used to end
    for good on a RecursionError, and treat a ProtocolError as fatal)."""
    from export.engine import RegionParams
    from tests.fake_worker import MODEL, FakeWorker
    params = RegionParams(np.zeros((1, MODEL.num_regions, 2), np.float32),
                          np.zeros((1, MODEL.num_regions, 2, 2), np.float32),
                          np.zeros((1, MODEL.num_regions, 2, 2), np.float32))
    garbage = {1: _raw(b"[" * 200_000), 2: _raw(b'{"type":[]}'), 3: wp.encode(wp.Animated(0, [b"x"])),
               4: wp.encode(wp.Failure(0, "no_such_code", "x", fatal=False))}

    def answer(session, msg):
        if session in (1, 2):
            return garbage[session]
        if session == 3:  # a well-formed message, but not what answers DetectRegions
            return wp.encode(wp.Animated(msg.id, [b"x"]))
        return wp.encode(wp.RegionsFound(msg.id, params))

    fake = FakeWorker(answer)
    logged = []
    r = RemoteEngine(WorkerSpec(fake.address, backoff=Backoff(first=0.05, most=0.1), timeout_s=5), log=logged.append)
    try:
        frames = np.zeros((1, 3, 64, 64), np.float32)
        for n in (1, 2, 3):
            with pytest.raises(EngineUnavailable):
                r.regions(frames)
            deadline = time.monotonic() + 10
            while not (r.connected and r.reconnects == n) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert r.connected and r.reconnects == n, logged
        assert r.regions(frames).shift.shape == (1, MODEL.num_regions, 2)
        assert any("malformed message" in line for line in logged)
        assert any("answered a request with Animated, not RegionsFound" in line for line in logged)
    finally:
        r.close()
        fake.close()


def test_the_client_name_is_logged_escaped(engine, checkpoint):
    """issue 21 item 10: the Hello client field went raw into the worker log (a forged line, an ANSI
    escape); and the client prints what a worker says escaped as well."""
    logged = []
    w = Worker(engine, model_info(engine, checkpoint), ServeOptions(port=0), log=logged.append).start_thread()
    forged = "evil\nmra-serve: session deadbeef closed after 0 frames\x1b[31m RED\x1b[0m\u202e"
    try:
        asyncio.run(_raw_session(w.port, ""))  # a well-behaved client ("test") for comparison
        replies = asyncio.run(_raw_session_as(w.port, forged))
        assert isinstance(replies[0], wp.Welcome)
    finally:
        w.join()
    opened = [line for line in logged if "opened" in line]
    assert len(opened) == 2 and "(test;" in opened[0]
    assert all("\n" not in line and "\x1b" not in line and "\u202e" not in line for line in logged)
    assert "(evil\\nmra-serve: session deadbeef closed after 0" in opened[1]  # cut at 60 characters
    assert wp.printable("a\x1b[2Jb\r\n" + "x" * 500) == "a\\x1b[2Jb\\r\\n" + "x" * 392 + "..."

    from tests.fake_worker import FakeWorker
    fake = FakeWorker(lambda n, msg: None, welcome=lambda n: wp.encode(wp.Failure(0, wp.MODEL, "no\n\x1b[2Jmodel", True)))
    try:
        with pytest.raises(WorkerError) as e:
            RemoteEngine(WorkerSpec(fake.address), log=lambda s: None)
        assert str(e.value).endswith(": no\\n\\x1b[2Jmodel")
    finally:
        fake.close()


async def _raw_session_as(port, client):
    from websockets.asyncio.client import connect
    async with connect(f"ws://127.0.0.1:{port}") as ws:
        await ws.send(wp.encode(wp.Hello(wp.PROTOCOL_VERSION, "", client)))
        return [wp.decode(await ws.recv())]


def test_a_worker_that_stops_answering_is_reported_and_the_request_timeout_is_an_option():
    """issue 21 item 6 (client): the request timeout was a fixed 10 s, and nothing told a live loop that
    the worker had stopped answering until that timeout fired."""
    from export.engine import EngineHealth, RegionParams
    from live.engines import EngineSpec, build_engine
    from live.live import build_parser
    from live.remote.client import worker_spec
    from nets.errors import UserError
    from tests.fake_worker import MODEL, FakeWorker
    k = MODEL.num_regions
    params = RegionParams(np.zeros((1, k, 2), np.float32), np.zeros((1, k, 2, 2), np.float32),
                          np.zeros((1, k, 2, 2), np.float32))
    frozen = threading.Event()
    frozen.set()
    fake = FakeWorker(lambda n, msg: None if frozen.is_set() else wp.encode(wp.RegionsFound(msg.id, params)))
    args = build_parser().parse_args(["--source", "p.png", "--worker", fake.address, "--worker-timeout", "1.5"])
    r = build_engine(EngineSpec(worker=worker_spec(args)))
    try:
        assert r.timeout_s == 1.5 and r.health(late_s=0.5) == EngineHealth()
        frames = np.zeros((1, 3, 64, 64), np.float32)
        outcome = []
        t0 = time.monotonic()
        call = threading.Thread(target=lambda: outcome.append(pytest.raises(EngineUnavailable, r.regions, frames)))
        call.start()
        time.sleep(0.8)  # the call is still waiting: the engine says so, from this other thread
        h = r.health(late_s=0.5)
        assert not h.answering and re.fullmatch(r"worker not answering \(\d s\)", h.reason) and 0.7 < h.waiting_s < 1.5
        assert r.health(late_s=5).answering  # late is the caller's to judge
        call.join(10)
        assert outcome and 1.4 < time.monotonic() - t0 < 4  # --worker-timeout 1.5, not 10
        assert "no reply within 1.5 s" in str(outcome[0].value)
        assert not r.health(late_s=0.5).answering  # still owed an answer after the timeout
        frozen.clear()  # the worker answers again
        assert r.regions(frames).shift.shape == (1, k, 2)
        assert r.health(late_s=0.5) == EngineHealth()
    finally:
        r.close()
        fake.close()
    with pytest.raises(UserError, match="--worker-timeout must be more than 0"):
        worker_spec(build_parser().parse_args(["--source", "p.png", "--worker", "h:1", "--worker-timeout", "0"]))


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG of a huge picture whose pixels are never needed (its header is refused first)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def test_wire_messages_say_what_is_wrong(worker, capfd):
    """issue 21 item 12 (wire): an oversized valid PNG was "not a JPEG, WebP or PNG image"; degenerate
    region parameters gave a numpy RuntimeWarning in the worker log and a frame of garbage; the client
    of mra-animate --worker printed its lines as "mra-live:"."""
    import warnings

    from export.engine import RegionParams
    from live.engines import EngineSpec, build_engine
    from live.remote.client import WorkerSpec
    from tests.fake_worker import FakeWorker
    src = (portrait(50)[0].transpose(1, 2, 0) * 255).astype(np.uint8)
    k = worker.model.num_regions
    huge = RegionParams(np.zeros((1, k, 2), np.float32), np.full((1, k, 2, 2), 1e38, np.float32),
                        np.full((1, k, 2, 2), 1e38, np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        replies = asyncio.run(_raw_session(worker.port, TOKEN, wp.encode(wp.DetectRegions(1, [_png_header(20000, 10000)])),
                                           wp.encode(wp.PrepareSource(2, 1, wp.encode_image(src, "png"))),
                                           wp.encode(wp.Animate(3, 1, huge))))
    assert replies[1].code == wp.BAD_FRAME and replies[1].message.startswith("expected a 64x64 image, got a")
    assert "not a JPEG" not in replies[1].message
    assert isinstance(replies[2], wp.SourceReady)
    assert isinstance(replies[3], wp.Failure) and replies[3].code == wp.BAD_MESSAGE
    assert "give no picture (NaN or infinite values)" in replies[3].message
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]

    fake = FakeWorker(lambda n, msg: _raw(b"[" * 100) if n == 1 else None)
    capfd.readouterr()
    r = build_engine(EngineSpec(worker=WorkerSpec(fake.address, client="mra-animate")))
    try:
        with pytest.raises(EngineUnavailable):
            r.regions(np.zeros((1, 3, 64, 64), np.float32))
        deadline = time.monotonic() + 10
        while r.reconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        r.close()
        fake.close()
    lines = capfd.readouterr().err.splitlines()
    assert lines and all(line.startswith("mra-animate: worker ") for line in lines), lines


def test_the_connection_on_its_own_against_a_scripted_worker():
    """issue 19: the reconnecting request/reply connection, without an engine: replies by id, the
    connection generation, reconnection after a drop, refusals, and a worker back with another model."""
    import dataclasses

    from export.engine import RegionParams
    from live.remote.connection import Connection, UnknownAvatar
    from tests.fake_worker import LIMITS, MODEL, FakeWorker
    k = MODEL.num_regions
    params = RegionParams(np.zeros((1, k, 2), np.float32), np.zeros((1, k, 2, 2), np.float32),
                          np.zeros((1, k, 2, 2), np.float32))

    def answer(n, msg):
        if isinstance(msg, wp.Animate):  # avatar 1 is unknown, 2 refused, 3 never answered
            if msg.avatar == 1:
                return wp.encode(wp.Failure(msg.id, wp.UNKNOWN_AVATAR, "no avatar 1"))
            if msg.avatar == 2:
                return wp.encode(wp.Failure(msg.id, wp.ENGINE, "boom\x1b[2J"))
            return None
        return wp.encode(wp.RegionsFound(msg.id, params))

    other = dataclasses.replace(MODEL, sha256="1" * 64, config_name="other")
    fake = FakeWorker(answer, welcome=lambda n: wp.encode(wp.Welcome(wp.PROTOCOL_VERSION, f"s{n}",
                                                                       other if n >= 3 else MODEL, LIMITS)))
    logged = []
    conn = Connection(WorkerSpec(fake.address, client="probe", timeout_s=5, backoff=Backoff(first=0.05, most=0.1)),
                      log=logged.append)
    try:
        assert conn.model == MODEL and conn.limits == LIMITS and conn.generation == 1 and conn.connected
        reply, generation = conn.request(wp.DetectRegions(conn.next_id(), [b"jpeg"]))
        assert isinstance(reply, wp.RegionsFound) and generation == 1
        assert [type(m).__name__ for _, m in fake.received] == ["DetectRegions"]
        with pytest.raises(UnknownAvatar):
            conn.request(wp.Animate(conn.next_id(), 1, params))
        with pytest.raises(WorkerError, match=r"boom\\x1b\[2J$"):
            conn.request(wp.Animate(conn.next_id(), 2, params))

        # a drop while a request waits: that call fails at once, the connection comes back by itself
        outcome = []
        waiting = threading.Thread(target=lambda: outcome.append(
            pytest.raises(EngineUnavailable, conn.request, wp.Animate(conn.next_id(), 3, params))))
        waiting.start()
        time.sleep(0.3)
        assert not conn.health(late_s=0.2).answering
        t0 = time.monotonic()
        fake.drop()
        waiting.join(10)
        assert outcome and time.monotonic() - t0 < 3 and "connection lost" in str(outcome[0].value)
        deadline = time.monotonic() + 10
        while not (conn.connected and conn.generation == 2) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert conn.generation == 2 and conn.reconnects == 1 and conn.health().answering
        assert conn.request(wp.DetectRegions(conn.next_id(), [b"jpeg"]))[1] == 2

        # the worker comes back with another model: refused for good
        fake.drop()
        deadline = time.monotonic() + 10
        while conn.fatal is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "now runs another model (other" in str(conn.fatal) and "restart probe" in str(conn.fatal)
        with pytest.raises(WorkerError, match="another model"):
            conn.request(wp.DetectRegions(conn.next_id(), [b"jpeg"]))
        assert conn.health().reason == "worker refused the session"
    finally:
        conn.close()
        fake.close()
    assert [line.split(": ", 1)[1] for line in logged] == ["connection lost; reconnecting", "reconnected",
                                                           "connection lost; reconnecting"]


def test_limits_sessions_and_idle_time(engine, checkpoint):
    w = start_worker(engine, checkpoint, max_sessions=1, idle_timeout_s=0.5)
    try:
        a = RemoteEngine(WorkerSpec(f"127.0.0.1:{w.port}", backoff=Backoff(first=5)), log=lambda s: None)
        with pytest.raises(WorkerError, match="full"):
            RemoteEngine(WorkerSpec(f"127.0.0.1:{w.port}"), log=lambda s: None)
        time.sleep(1.5)  # idle: the worker closes the session; the client notices
        assert not a.connected
        with pytest.raises(EngineUnavailable):
            a.regions(portrait(1))
        a.close()
    finally:
        w.join()


def test_a_full_worker_is_called_full_and_waited_for_by_offline_jobs(engine, checkpoint):
    """issue 21 item 9: a full worker was "cannot reach the worker ... is mra-serve running there?", and
    mra-animate (wait_s > 0) gave up at once there instead of waiting as it does for a lost worker."""
    w = start_worker(engine, checkpoint, max_sessions=1)
    a = b = None
    try:
        a = RemoteEngine(WorkerSpec(f"127.0.0.1:{w.port}"), log=lambda s: None)
        with pytest.raises(WorkerError) as e:  # mra-live: one clear error line
            RemoteEngine(WorkerSpec(f"127.0.0.1:{w.port}"), log=lambda s: None)
        assert str(e.value) == (f"worker ws://127.0.0.1:{w.port}/: the worker is full (it serves 1 at once, mra-serve "
                                "--max-sessions); try again later or another worker")
        with pytest.raises(WorkerError, match=r"is full .*\(waited 0.5 s\)$"):
            RemoteEngine(WorkerSpec(f"127.0.0.1:{w.port}", wait_s=0.5, backoff=Backoff(first=0.1)), log=lambda s: None)
        threading.Timer(1.0, a.close).start()  # a session ends meanwhile
        logged = []
        t0 = time.monotonic()
        b = RemoteEngine(WorkerSpec(f"127.0.0.1:{w.port}", wait_s=30, backoff=Backoff(first=0.1, most=0.3)),
                         log=logged.append)
        assert b.connected and 0.9 < time.monotonic() - t0 < 20
        assert len(logged) == 1 and "is full" in logged[0] and "waiting up to 30 s" in logged[0]
    finally:
        for r in (a, b):
            if r is not None:
                r.close()
        w.join()


def test_serve_cli_refuses_an_open_address_without_a_token(checkpoint):
    r = subprocess.run([sys.executable, "-m", "live.serve", "--checkpoint", checkpoint, "--config", "tiny", "--host",
                        "0.0.0.0", "--backend", "torch"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: --host 0.0.0.0 lets other machines in")
    assert "Traceback" not in r.stderr


def test_serve_cli_on_an_open_address_with_a_token_says_how_to_add_tls(checkpoint, tmp_path):
    tok = tmp_path / "token.txt"
    tok.write_text(TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "live.serve", "--checkpoint", str(checkpoint), "--config", "tiny",
                             "--backend", "torch", "--host", "0.0.0.0", "--port", "0", "--token-file", str(tok)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "unencrypted" in line or len(lines) > 20:
                break
        text = "".join(lines)
        assert "listening on ws://0.0.0.0:" in text and "token required" in text
        assert "--tls-cert" in text and "reverse proxy" in text
    finally:
        proc.kill()
        proc.wait()


def test_live_cli_bad_token_is_one_error_line(worker, tmp_path):
    src = tmp_path / "p.png"
    from PIL import Image
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(src)
    tok = tmp_path / "t.txt"
    tok.write_text("x" * 20)
    r = subprocess.run([sys.executable, "-m", "live.live", "--source", src, "--camera", "missing.mp4", "--worker",
                        f"127.0.0.1:{worker.port}", "--token-file", tok, "--crop", "none"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: worker ws://127.0.0.1:")
    assert "refused the token" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "live.live", "--source", src, "--worker", "127.0.0.1:1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "error: cannot reach the worker ws://127.0.0.1:1/" in r.stderr


def test_a_malformed_worker_address_is_one_error_line(tmp_path):
    """issue 21 item 8: --worker "[::1" ended in a ValueError traceback, status 1."""
    from PIL import Image
    from tests.mediagen import make_video
    src = tmp_path / "p.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(src)
    driving = make_video(tmp_path / "driving.mp4", n=3, size=(64, 64))
    for tool, more in (("live.live", []), ("live.animate", ["--driving", driving, "--output", tmp_path / "o.mp4"])):
        r = subprocess.run([sys.executable, "-m", tool, "--source", src, "--crop", "none", *more, "--worker", "[::1"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (tool, r.stderr)
        assert r.stderr.startswith("error: --worker must be HOST:PORT") and r.stderr.count("\n") == 1, r.stderr
        assert "[::1]:PORT" in r.stderr and "Invalid IPv6 URL" in r.stderr


# -- reconnection ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_server(checkpoint, port):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "live.serve", "--checkpoint", str(checkpoint), "--config", "tiny",
                             "--backend", "torch", "--port", str(port), "--quiet"], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "listening on" in line:
            return proc
    raise AssertionError(f"mra-serve did not start (exit {proc.wait()})")


@pytest.mark.slow
def test_a_killed_and_restarted_worker_is_reconnected_to(checkpoint):
    port = free_port()
    server = spawn_server(checkpoint, port)
    r = RemoteEngine(WorkerSpec(f"127.0.0.1:{port}", backoff=Backoff(first=0.1, most=0.5)), log=lambda s: None)

    class Sink:
        def __init__(self):
            self.frames = []

        def write(self, frame):
            self.frames.append((time.monotonic(), frame))

        def close(self):
            pass

    src = portrait(4)
    sink = Sink()
    pipe = LivePipeline(r, IteratorSource(moving_frames(100000), fps=20), CenterCropper(),
                        Avatars(r, [Path("a.png")], lambda p: src), [sink], LiveOptions(output_size=64))
    runner = threading.Thread(target=pipe.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while len(sink.frames) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(sink.frames) >= 10
        server.kill()
        server.wait()
        t_kill = time.monotonic()
        time.sleep(2.0)
        held = [f for t, f in sink.frames if t > t_kill + 0.5]
        assert len(held) >= 3  # the output keeps going, on the last frame
        assert all(np.array_equal(f, held[0]) for f in held)
        assert not r.connected and any("engine unavailable" in e for e in pipe.stats.events)
        server = spawn_server(checkpoint, port)
        n = len(sink.frames)
        deadline = time.monotonic() + 60
        while (len(sink.frames) < n + 10 or "engine back" not in " ".join(pipe.stats.events)) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.connected and r.reconnects == 1
        assert any("engine back" in e for e in pipe.stats.events)
        fresh = [f for _, f in sink.frames[n:]]
        assert len(fresh) >= 10 and any(not np.array_equal(f, fresh[0]) for f in fresh)  # live again
    finally:
        pipe.commands.put("q")
        runner.join(30)
        r.close()
        server.kill()
        server.wait()


# -- behind a load balancer ----------------------------------------------------------------------------

@pytest.mark.slow
def test_behind_haproxy_sticky_per_client_and_failover(checkpoint):
    """docs/mra-serve-haproxy.cfg as shipped: a client stays on its worker across reconnects; when that
    worker goes, it lands on the other one and carries on (portrait sent again)."""
    import shutil
    import urllib.request
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    engines = [TorchEngine(nets.load_model(checkpoint)) for _ in range(2)]
    workers = [start_worker(e, checkpoint) for e in engines]
    port = free_port()
    env = dict(os.environ, MRA_LB_BIND=f"127.0.0.1:{port}", MRA_W1=f"127.0.0.1:{workers[0].port}",
               MRA_W2=f"127.0.0.1:{workers[1].port}")
    proxy = subprocess.Popen(["haproxy", "-f", str(ROOT / "docs" / "mra-serve-haproxy.cfg")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read() == b"ok\n"
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        r = RemoteEngine(WorkerSpec(f"127.0.0.1:{port}", image_format="png", backoff=Backoff(first=0.1, most=0.5)),
                         log=lambda s: None)
        src, drv = portrait(20), portrait(21)
        av = r.prepare_source(src)
        init = r.regions(drv)
        first = r.animate(av, r.transfer(av, init, init, "relative"))
        home = next(i for i, w in enumerate(workers) if w.sessions)
        for _ in range(2):  # the worker drops the connection: the client comes back to the same worker
            workers[home].close_sessions()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (r.connected and workers[home].sessions):
                time.sleep(0.05)
            assert workers[home].sessions and not workers[1 - home].sessions
        workers[home].join()  # the worker goes away: the client lands on the other one
        deadline = time.monotonic() + 30
        out = None
        while out is None and time.monotonic() < deadline:
            try:
                out = r.animate(av, r.transfer(av, init, init, "relative"))
            except EngineUnavailable:
                time.sleep(0.2)
        assert out is not None and workers[1 - home].sessions and r.reconnects == 3
        assert np.abs(out - first).max() <= 1 / 255 + 1e-6  # same model, same portrait, same frame
    finally:
        if r is not None:
            r.close()
        proxy.terminate()
        proxy.wait(10)
        for w in workers:
            w.join()


def test_tls_worker_with_a_self_signed_certificate(engine, checkpoint, tmp_path):
    import shutil
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    from live.serve import tls_context
    w = start_worker(engine, checkpoint, ssl=tls_context(cert, key), token=TOKEN)
    try:
        with pytest.raises(WorkerError, match="not trusted.*--worker-ca"):
            RemoteEngine(WorkerSpec(f"wss://127.0.0.1:{w.port}", TOKEN), log=lambda s: None)
        r = RemoteEngine(WorkerSpec(f"wss://127.0.0.1:{w.port}", TOKEN, ca_file=cert), log=lambda s: None)
        av = r.prepare_source(portrait(30))
        p = r.regions(portrait(31))
        assert r.animate(av, r.transfer(av, p, p, "relative")).shape == (1, 3, 64, 64)
        r.close()
    finally:
        w.join()


def test_mra_animate_with_a_worker(worker, tmp_path):
    from PIL import Image
    from tests.mediagen import count_frames, make_video
    src = tmp_path / "portrait.png"
    Image.fromarray((portrait(40, 96)[0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(src)
    driving = make_video(tmp_path / "driving.mp4", n=20, size=(96, 96))
    token = tmp_path / "token.txt"
    token.write_text(TOKEN)
    out = tmp_path / "out.mp4"
    r = subprocess.run([sys.executable, "-m", "live.animate", "--source", str(src), "--driving", str(driving),
                        "--output", str(out), "--crop", "none", "--worker", f"127.0.0.1:{worker.port}",
                        "--token-file", str(token)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "remote engine" in r.stdout and count_frames(out) == 20
    assert worker.batcher.stats.frames["animate"] == 20 and worker.batcher.stats.mean_batch("animate") > 4


@pytest.mark.slow
def test_serve_load_benchmark_runs(checkpoint, tmp_path):
    out = tmp_path / "load.json"
    r = subprocess.run([sys.executable, "benchmarks/serve_load.py", "--clients", "2", "--seconds", "2", "--warmup", "2",
                        "--startup", "1", "--checkpoint", str(checkpoint), "--config", "tiny", "--backend", "torch",
                        "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json
    rows = json.loads(out.read_text())["rows"]
    assert [row["clients"] for row in rows] == [2]
    assert all(row["fps_per_client_min"] > 0 and row["latency_p95_ms"] >= row["latency_p50_ms"] > 0 for row in rows)
    assert "| 2 |" in r.stdout


def test_switching_avatars_while_the_worker_is_away_waits_for_it(engine):
    """n / p while the engine is unavailable: the switch happens, the portrait is prepared once it is back."""
    class Flaky:
        down = True

        def __getattr__(self, name):
            return getattr(engine, name)

        def prepare_source(self, image):
            if self.down:
                raise EngineUnavailable("reconnecting")
            return engine.prepare_source(image)

    flaky = Flaky()
    flaky.down = False
    avatars = Avatars(flaky, [Path("a.png"), Path("b.png")], lambda p: portrait(1 if p.name == "a.png" else 2))
    avatars.current()
    flaky.down = True
    avatars.step(1)
    assert avatars.name == "b.png"
    with pytest.raises(EngineUnavailable):
        avatars.current()
    flaky.down = False
    assert avatars.current() is avatars.current()


def test_the_engine_factory_builds_the_remote_engine(worker, checkpoint):
    from live.engines import EngineSpec, build_engine
    from live.remote.client import WorkerSpec
    from nets.errors import UserError
    w = WorkerSpec(f"127.0.0.1:{worker.port}", TOKEN, "webp", 70)
    engine = build_engine(EngineSpec(checkpoint, "tiny", worker=w))  # names the model the worker must run
    try:
        assert isinstance(engine, RemoteEngine) and engine.codec == wp.ImageCodec("webp", 70)
    finally:
        engine.close()
    with pytest.raises(UserError, match="--device is chosen on the worker"):
        build_engine(EngineSpec(device="cuda", worker=w))


def test_a_message_over_the_workers_limit_is_one_clear_error(engine, checkpoint):
    w = start_worker(engine, checkpoint, max_message_bytes=8 << 10)
    try:
        r = RemoteEngine(WorkerSpec(f"127.0.0.1:{w.port}", image_format="png"), log=lambda s: None)
        noise = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)  # about 12 kB as PNG
        with pytest.raises(WorkerError, match="over the worker's limit.*--max-message-mb"):
            r.prepare_source(noise)
        assert r.connected  # nothing was sent: the session goes on
        r.close()
    finally:
        w.join()

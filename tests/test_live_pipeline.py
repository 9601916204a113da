"""The live loop's pieces: smoothing, newest-frame capture, the staged pipeline with a file sink."""
import queue
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import nets
from export.engine import RegionParams
from export.torch_engine import TorchEngine
from live.loop.capture import Frame, IteratorSource, LatestFrame
from live.loop.pacing import MIN_REPEAT_S, EngineWatch, OutputPacer
from live.loop.pipeline import Avatars, CenterCropper, DelayLine, LiveOptions, LivePipeline, Rendered
from live.loop.smoothing import LostFacePolicy, OneEuroConfig, OneEuroFilter, RegionSmoother, blend


def test_one_euro_smooths_noise_and_follows_steps():
    rng = np.random.default_rng(0)
    f = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.0))
    t = np.arange(200) / 30
    noisy = 0.5 + rng.normal(0, 0.02, size=200)
    out = np.array([f(np.array([x]), ti)[0] for x, ti in zip(noisy, t)])
    assert out[50:].std() < noisy[50:].std() / 2
    # a big fast move is followed quickly when beta > 0
    f2 = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=5.0))
    step = np.where(np.arange(60) < 30, 0.0, 1.0)
    out2 = np.array([f2(np.array([x]), i / 30)[0] for i, x in enumerate(step)])
    assert out2[36] > 0.9
    slow = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.0))
    out3 = np.array([slow(np.array([x]), i / 30)[0] for i, x in enumerate(step)])
    assert out3[36] < out2[36]


def test_region_smoother_disabled_is_identity():
    p = RegionParams(shift=np.random.rand(1, 4, 2).astype(np.float32))
    assert RegionSmoother(enabled=False)(p, 0.0) is p
    s = RegionSmoother()
    assert np.allclose(s(p, 0.0).shift, p.shift)


def test_lost_face_policy_and_blend():
    pol = LostFacePolicy(hold_s=1.0, ease_s=1.0)
    assert pol.weight(0.5) == 0.0 and pol.weight(1.0) == 0.0 and pol.weight(2.5) == 1.0
    assert 0 < pol.weight(1.5) < 1
    a = RegionParams(shift=np.zeros((1, 2, 2), np.float32))
    b = RegionParams(shift=np.ones((1, 2, 2), np.float32))
    assert np.allclose(blend(a, b, 0.25).shift, 0.25)


def test_latest_frame_drops_stale_frames():
    slot = LatestFrame()
    for i in range(5):
        slot.put(Frame(np.zeros((2, 2, 3), np.uint8), time.monotonic(), i))
    got = slot.get(timeout=0.1)
    assert got.index == 4 and slot.dropped == 4
    assert slot.get(timeout=0.05) is None


def test_center_cropper_is_the_largest_centred_square():
    box = CenterCropper()(np.zeros((100, 200, 3), np.uint8))
    assert box.box == (50.0, 0.0, 150.0, 100.0)


def moving_frames(n, h=120, w=160):
    def gen():
        for i in range(n):
            img = np.full((h, w, 3), 60, np.uint8)
            x = 40 + int(20 * np.sin(i / 5))
            img[30:90, x:x + 60] = (220, 160, 120)
            yield img
    return gen


@pytest.fixture(scope="module")
def engine():
    return TorchEngine(nets.build_model("tiny").eval())


class ListSink:
    name = "list"

    def __init__(self):
        self.frames = []

    def write(self, frame):
        self.frames.append(frame)

    def close(self):
        pass


def make_pipeline(engine, capture, **opts):
    src = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    avatars = Avatars(engine, [Path("a.png"), Path("b.png")], lambda p: src if p.name == "a.png" else src[:, ::-1].copy())
    sink = ListSink()
    options = LiveOptions(output_size=96, **opts)
    return LivePipeline(engine, capture, CenterCropper(), avatars, [sink], options), sink


def test_pipeline_runs_to_max_frames(engine):
    pipe, sink = make_pipeline(engine, IteratorSource(moving_frames(300), fps=60), max_frames=20)
    stats = pipe.run()
    assert len(sink.frames) == 20 and stats.frames_out == 20
    assert sink.frames[0].shape == (96, 96, 3) and sink.frames[0].dtype == np.uint8
    snap = stats.snapshot()
    assert snap.latency_ms.p50 > 0 and "animate" in snap.stages and "regions" in snap.stages


def test_pipeline_hot_keys_through_the_command_queue(engine):
    pipe, sink = make_pipeline(engine, IteratorSource(moving_frames(400), fps=60), max_frames=40)
    for c in "nmro":
        pipe.commands.put(c)
    pipe.run()
    events = " ".join(pipe.stats.events)
    assert "avatar b.png" in events and "recalibrate" in events and "mode avd" in events
    assert pipe.overlay is True and pipe.avatars.index == 1
    pipe2, _ = make_pipeline(engine, IteratorSource(moving_frames(1000), fps=60))
    pipe2.commands.put("q")
    t = time.monotonic()
    pipe2.run()
    assert time.monotonic() - t < 10 and pipe2.stats.frames_out < 100


def test_ctrl_c_stops_cleanly_and_keeps_what_was_written(engine):
    class InterruptingSink(ListSink):
        def write(self, frame):
            if len(self.frames) == 5:
                raise KeyboardInterrupt
            super().write(frame)

    pipe, _ = make_pipeline(engine, IteratorSource(moving_frames(1000), fps=60))
    sink = pipe.sinks[0] = InterruptingSink()
    stats = pipe.run()  # returns instead of raising
    assert len(sink.frames) == 5 and stats.frames_out == 5
    assert any("interrupted" in e for e in stats.events)


def test_pipeline_ends_with_a_file_camera(engine):
    """A camera that ends stops the pipeline: every frame read is either shown or counted as
    dropped (newest wins), none is lost in between, and the newest frame is always shown."""
    opts = dict(mode="standard", smoothing=False)  # each output depends on its own camera frame only
    pipe, sink = make_pipeline(engine, IteratorSource(moving_frames(15), fps=100), **opts)
    done = threading.Event()
    result = {}
    runner = threading.Thread(target=lambda: (result.setdefault("stats", pipe.run()), done.set()), daemon=True)
    runner.start()
    assert done.wait(60), "the pipeline did not stop when its camera ended"
    stats = result["stats"]
    assert stats.frames_in == 15
    assert 1 <= stats.frames_out == len(sink.frames) <= 15
    assert stats.frames_out + stats.dropped == 15, (stats.frames_out, stats.dropped)
    assert all(f.shape == (96, 96, 3) and f.dtype == np.uint8 for f in sink.frames)
    last = make_pipeline(engine, IteratorSource(lambda: iter(list(moving_frames(15)())[-1:]), fps=100), **opts)
    last[0].run()
    assert np.array_equal(sink.frames[-1], last[1].frames[-1])  # the camera's last frame came out last


def test_camera_unplugged_keeps_output_alive_and_recovers(engine):
    """A capture that stops mid-run: the sink keeps getting the last good frame, then frames resume."""
    opened = {"n": 0}

    def first():
        opened["n"] += 1
        return moving_frames(10)()

    def reopen():
        opened["n"] += 1
        if opened["n"] < 3:
            raise RuntimeError("still unplugged")
        return moving_frames(200)()

    cap = IteratorSource(first, fps=50, on_end="lost", retry_s=0.3, reopen=reopen)
    logs = []
    pipe, sink = make_pipeline(engine, cap, max_frames=40)
    pipe.log = logs.append
    pipe.run()
    assert cap.lost_events >= 1 and opened["n"] >= 3
    assert any("camera lost" in line for line in logs)
    assert len(sink.frames) >= 40  # repeated last frames while lost, then live ones


def test_face_lost_holds_then_eases_to_neutral(engine):
    """A cropper that loses the face: output keeps coming and returns to the reference pose."""
    state = {"i": 0}

    class FlakyCropper(CenterCropper):
        def __call__(self, image):
            state["i"] += 1
            return None if 10 < state["i"] else super().__call__(image)

    pipe, sink = make_pipeline(engine, IteratorSource(moving_frames(400), fps=50), max_frames=60,
                               lost=LostFacePolicy(hold_s=0.1, ease_s=0.2))
    pipe.cropper = FlakyCropper()
    pipe.run()
    assert pipe.stats.face_lost_frames > 0 and len(sink.frames) == 60
    # after easing, the output equals the avatar animated at its reference (neutral) pose
    avatar = pipe.avatars.current()
    reference = pipe.motion.reference
    neutral = engine.animate(avatar, engine.transfer(avatar, reference, reference, "relative"))[0]
    import cv2
    expected = cv2.resize((np.clip(neutral, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0), (96, 96),
                          interpolation=cv2.INTER_CUBIC)
    assert np.abs(sink.frames[-1].astype(int) - expected.astype(int)).max() <= 2


def test_delay_holds_latency(engine):
    pipe, sink = make_pipeline(engine, IteratorSource(moving_frames(300), fps=30), max_frames=15, delay_ms=250)
    stats = pipe.run()
    assert stats.snapshot().latency_ms.p50 >= 245


def test_delay_line_keeps_order_and_times():
    line = DelayLine(0.2)
    for i in range(5):
        line.push(Rendered(np.zeros((2, 2, 3), np.uint8), capture_ts=10.0 + i * 0.04, index=i))
    assert line.wait_s(10.0) == pytest.approx(0.2) and line.due(10.19) == []
    assert [r.index for r in line.due(10.25)] == [0, 1] and len(line) == 3
    assert [r.index for r in line.due(99.0)] == [2, 3, 4] and line.wait_s(99.0) == float("inf")
    assert [r.index for r in DelayLine(0.0).due(0.0)] == []


def test_delay_costs_no_frames(engine):
    """Every rendered frame comes out, each at its capture time + the delay (the sink never sleeps
    on one frame while the one-slot mailbox drops the next)."""
    pipe, sink = make_pipeline(engine, IteratorSource(moving_frames(40), fps=25), delay_ms=200)
    rendered = []
    put = pipe.rendered.put
    pipe.rendered.put = lambda item: (rendered.append(item.index), put(item))
    stats = pipe.run()
    lat = np.asarray(stats.all_latency_ms)
    assert len(rendered) >= 10 and stats.frames_out == len(rendered) == len(sink.frames)
    assert pipe.rendered.dropped == 0
    assert lat.min() >= 199 and np.median(lat) < 200 + 60, lat


def test_a_failed_avatar_switch_keeps_the_session(engine):
    src = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)

    def load(path):
        if path.name == "gone.png":
            from nets.errors import UserError
            raise UserError("source image not found: gone.png; check the path")
        return src

    avatars = Avatars(engine, [Path("a.png"), Path("gone.png"), Path("c.png")], load)
    sink = ListSink()
    pipe = LivePipeline(engine, IteratorSource(moving_frames(400), fps=60), CenterCropper(), avatars, [sink],
                        LiveOptions(output_size=96, max_frames=30))
    pipe.commands.put("n")
    pipe.run()
    events = " ".join(pipe.stats.events)
    assert "cannot switch to gone.png" in events and len(sink.frames) == 30
    assert [p.name for p in avatars.paths] == ["a.png", "c.png"] and avatars.name == "a.png"
    avatars.step(1)
    assert avatars.name == "c.png"


def test_avatars_check_skips_unusable_images(engine):
    from nets.errors import UserError

    src = np.zeros((1, 3, 64, 64), np.float32)

    def load(path):
        if path.stem.startswith("bad"):
            raise UserError(f"cannot read source image {path.name}: not a valid image")
        return src

    warnings = []
    a = Avatars(engine, [Path("bad1.png"), Path("ok.png"), Path("bad2.png")], load).check(warnings.append)
    assert [p.name for p in a.paths] == ["ok.png"] and len(warnings) == 2 and "skipping bad1.png" in warnings[0]
    with pytest.raises(UserError, match="none of the 2 images can be used.*bad1.png"):
        Avatars(engine, [Path("bad1.png"), Path("bad2.png")], load).check()
    with pytest.raises(UserError, match="^cannot read source image bad1.png"):  # one source: its own error
        Avatars(engine, [Path("bad1.png")], load).check()


def test_avd_mode_without_avd_network_falls_back_with_a_note(engine, monkeypatch):
    monkeypatch.setattr(engine, "has_avd", False)
    pipe, _ = make_pipeline(engine, IteratorSource(moving_frames(10), fps=60), mode="avd", max_frames=2)
    assert pipe.mode == "relative" and "avd" not in pipe.modes
    assert any("no AVD network" in e for e in pipe.stats.events)


def test_pipeline_pastes_back_into_each_avatars_portrait(engine):
    """Full-frame output: each avatar's animated crop goes back into its own portrait, in the output frame."""
    from nets.media.face import CropBox
    from live.pasteback import FrameSize, PasteBack
    from live.loop.pipeline import AvatarImage

    src = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    portraits = {"a.png": np.full((200, 150, 3), 30, np.uint8), "b.png": np.full((150, 200, 3), 220, np.uint8)}
    out = FrameSize(320, 180)

    def load(p):
        return AvatarImage(src, PasteBack.prepare(portraits[p.name], CropBox(75, 75, 60) if p.name == "a.png"
                                                  else CropBox(100, 75, 60), out))
    avatars = Avatars(engine, [Path("a.png"), Path("b.png")], load)

    class SwitchingSink(ListSink):  # "n" after the 10th frame (not after a time: a fast run would miss it)
        def write(self, frame):
            super().write(frame)
            if len(self.frames) == 10:
                pipe.commands.put("n")

    sink = SwitchingSink()
    pipe = LivePipeline(engine, IteratorSource(moving_frames(400), fps=60), CenterCropper(), avatars, [sink],
                        LiveOptions(output_size=out, max_frames=30))
    stats = pipe.run()
    assert stats.frames_out == 30 and all(f.shape == (180, 320, 3) for f in sink.frames)
    first, last = sink.frames[0], sink.frames[-1]
    assert (first[150, 110] == 30).all()  # the dark portrait itself, outside the face's box
    assert (last[5, 160] == 220).all()  # the light one after "n"
    assert (first[:, :40] < 30).all()  # around the contained portrait: its blurred, dimmed fill
    assert "post" in stats.snapshot().stages


@pytest.fixture(scope="module")
def face_marks():
    """Face-mesh landmarks of the shipped drawn portrait (a real face shape to move)."""
    from live.live import EXAMPLE_PORTRAIT
    from live.portrait import prepare_portrait
    from nets import media
    from nets.media.facemesh import FaceMesh

    rgb, _ = prepare_portrait(media.read_image(EXAMPLE_PORTRAIT), 256, "auto")
    with FaceMesh() as mesh:
        return mesh(rgb)


def _mouth_opened(marks, px):
    from nets.media import facemesh as fm

    moved = marks.copy()
    moved[list(fm.LIPS_INNER_LOWER), 1] += px
    return moved


def test_the_reference_is_the_most_neutral_face_of_the_first_second(engine, face_marks):
    pipe, _ = make_pipeline(engine, IteratorSource(moving_frames(1), fps=60), smoothing=False)
    motion = pipe.motion
    params = [RegionParams(np.full((1, 10, 2), i, np.float32)) for i in range(4)]
    talking, shut = _mouth_opened(face_marks, 12.0), face_marks
    motion.update(params[0], talking, 0.0)  # the start: mouth open
    motion.update(params[1], shut, 0.4)  # mouth closed within the first second: the new reference
    motion.update(params[2], _mouth_opened(face_marks, 4.0), 0.8)  # less neutral: not taken
    assert motion.reference.shift[0, 0, 0] == 1 and motion.reference_marks is shut
    motion.update(params[3], face_marks - 0.5, 1.5)  # after the first second: the reference stays
    assert motion.reference.shift[0, 0, 0] == 1
    pipe.commands.put("r")  # r: the face of the moment, however it looks
    pipe._handle_commands()
    motion.update(params[3], talking, 2.0)
    motion.update(params[0], shut, 2.1)
    assert motion.reference.shift[0, 0, 0] == 3 and motion.reference_marks is talking


def test_expression_keys_raise_and_lower_the_gain_within_its_range(engine):
    pipe, _ = make_pipeline(engine, IteratorSource(moving_frames(1), fps=60), expression=1.9)
    for c in "+++":
        pipe.commands.put(c)
    pipe._handle_commands()
    assert pipe.expression.settings.gain == 2.0
    for _ in range(25):
        pipe.commands.put("-")
    pipe._handle_commands()
    assert pipe.expression.settings.gain == 0.0
    assert "expression 0" in " ".join(pipe.stats.events)


def test_a_late_engine_keeps_the_output_alive_and_says_so():
    """Issue 21 item 6: an engine call that blocks for seconds (a stopped worker, until the request
    timeout) froze the sinks for as long; now the last frame goes out again after two frame periods
    (at least MIN_REPEAT_S) and the status line says that the engine is not answering."""
    slow = TorchEngine(nets.build_model("tiny").eval())
    real = slow.regions
    calls = {"n": 0}

    def regions(x):
        calls["n"] += 1
        if calls["n"] == 12:
            time.sleep(4.0)
        return real(x)

    slow.regions = regions

    class TimedSink(ListSink):
        def write(self, frame):
            self.frames.append(time.monotonic())

    pipe, _ = make_pipeline(slow, IteratorSource(moving_frames(600), fps=30), max_frames=30, status_every_s=0.2)
    sink = pipe.sinks[0] = TimedSink()
    logs = []
    pipe.log = logs.append
    stats = pipe.run()
    gaps = np.diff(sink.frames)
    assert calls["n"] > 12 and stats.frames_out == 30
    assert gaps.max() < 1.5, f"the sinks went {gaps.max():.1f} s without a frame"
    snap = stats.snapshot()
    assert snap.frames_repeated >= 3 and snap.max_sink_gap_ms < 1500 and snap.max_output_gap_ms > 3500
    assert any("engine not answering" in line for line in logs)
    assert "engine not answering" in " ".join(snap.events) and "engine answering again" in " ".join(snap.events)


def test_output_pacer_caps_new_frames_and_repeats_only_when_due():
    capped = OutputPacer(fps=10)
    assert capped.admit(0.0) and not capped.admit(0.02) and capped.admit(0.1) and capped.period_s == 0.1
    p = OutputPacer()
    assert not p.repeat_due(100.0, sure=True)  # nothing sent yet: nothing to repeat
    for i in range(20):
        p.admit(i * 0.04)
    last = 19 * 0.04
    assert p.period_s == pytest.approx(0.04, abs=0.01)
    assert not p.repeat_due(last + 0.1) and p.repeat_due(last + MIN_REPEAT_S)  # a slow call: not before the floor
    assert p.repeat_due(last + 0.09, sure=True)  # the camera lost: after two frame periods
    p.repeated_at(last + 0.09)
    assert not p.repeat_due(last + 0.1) and p.repeat_due(last + 0.14)  # then every frame period
    assert p.admit(last + 0.2) and not p.repeat_due(last + 0.3)  # a new frame ends the repeats


def test_engine_watch_and_the_status_note(engine):
    from export.engine import EngineHealth

    watch = EngineWatch()
    assert watch.busy_s() == 0.0
    with watch.call("regions"):
        assert watch.busy_s(time.monotonic() + 3) >= 3
    assert watch.busy_s() == 0.0
    pipe, _ = make_pipeline(engine, IteratorSource(moving_frames(1), fps=30))
    assert pipe.engine_note() == ""
    with pipe.engine_watch.call("animate"):
        assert pipe.engine_note(time.monotonic() + 2.2) == "engine not answering (2 s)"

    class Remote:  # a remote engine says why itself
        backend = "remote"

        def health(self, late_s=1.0):
            return EngineHealth(False, "worker not answering (4 s)", 4.0)

    pipe.engine = Remote()
    assert pipe.engine_note() == "worker not answering (4 s)"


def test_a_full_disk_stops_only_the_recording(engine):
    """Issue 21 item 14: a recording that hits a full disk is dropped with one line; the other output goes on."""
    import errno

    class FullDisk(ListSink):
        name = "file"
        path = Path("/full/rec.mp4")
        aborted = False

        def write(self, frame):
            if len(self.frames) >= 4:
                raise OSError(errno.ENOSPC, "No space left on device")
            super().write(frame)

        def abort(self):
            self.aborted = True

    pipe, sink = make_pipeline(engine, IteratorSource(moving_frames(300), fps=60), max_frames=20)
    rec = FullDisk()
    pipe.sinks.append(rec)
    lines = []
    pipe.log = lines.append
    stats = pipe.run()
    assert stats.frames_out == 20 and len(sink.frames) == 20  # the virtual camera (here a list) kept streaming
    assert rec not in pipe.sinks and rec.aborted and len(rec.frames) == 4
    warned = [ln for ln in lines if "recording stopped" in ln]
    assert len(warned) == 1 and "/full/rec.mp4" in warned[0] and "list go on" in warned[0]
    assert sum("recording stopped" in e for e in stats.events) == 1
    alone, _ = make_pipeline(engine, IteratorSource(moving_frames(300), fps=60), max_frames=20)
    alone.sinks[:] = [FullDisk()]  # the only output: the session ends with the error, as before
    with pytest.raises(OSError):
        alone.run()


def test_a_full_disk_stops_only_the_real_recording(engine, tmp_path):
    """The same with mra-live's own FileSink, whose media writer reports a full disk as a DiskFault
    (a UserError, not an OSError): only the recording stops, its partial frames are removed, and the
    virtual camera (here a list) streams on; one line says so."""
    import errno

    from live.loop.sinks import FileSink

    pipe, sink = make_pipeline(engine, IteratorSource(moving_frames(300), fps=60), max_frames=20)
    rec = FileSink(tmp_path / "rec", 25, 96, 96)  # a folder of PNG frames
    written = rec.writer._write_one

    def fill_up(rgb):
        if rec.writer.frames_written >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        written(rgb)
    rec.writer._write_one = fill_up
    pipe.sinks.append(rec)
    lines = []
    pipe.log = lines.append
    stats = pipe.run()
    assert stats.frames_out == 20 and len(sink.frames) == 20
    assert rec not in pipe.sinks and list(tmp_path.iterdir()) == []
    warned = [ln for ln in lines if "recording stopped" in ln]
    assert len(warned) == 1 and f"cannot write {tmp_path / 'rec'}: no space left on the device" in warned[0]

"""Write faults the user can fix (disk full, read-only, busy mount point): one ``error:`` line,
exit status 2, no traceback, no half-written output, and nothing the user had is lost."""
import errno
from pathlib import Path

import numpy as np
import pytest
import torch

import nets
from live import animate
from nets import media
from mediagen import make_video, pattern, save_image, small_tmpfs
from nets.errors import run_cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    nets.save_model(nets.build_model("tiny"), d / "tiny.pth")
    save_image(d / "source.png", pattern(120, 100, 0.2, seed=5))
    make_video(d / "driving.mp4", n=20, size=(96, 96), fps=25)
    return d


def run_animate(capfd, files, out, *extra):
    capfd.readouterr()
    code = animate.main([str(a) for a in ["--source", files / "source.png", "--driving", files / "driving.mp4",
                                          "--output", out, "--checkpoint", files / "tiny.pth", "--crop", "none",
                                          "--backend", "torch", *extra]])
    return code, capfd.readouterr().err


def one_error_line(code, err, *words):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, repr(err)
    for w in words:
        assert w in err, err
    return err


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial" in p.name or ".probe" in p.name]


@pytest.mark.parametrize("name", ["out.mp4", "out.gif", "frames"])
def test_disk_full_on_a_real_small_disk(files, tmp_path, capfd, name):
    with small_tmpfs(tmp_path / "disk", "8k") as disk:
        code, err = run_animate(capfd, files, disk / name, "--size", 256)
        one_error_line(code, err, f"cannot write {disk / name}: no space left on the device")
        assert list(disk.iterdir()) == []  # the temporary is gone, nothing half-written


@pytest.mark.parametrize("fault", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_write_fault_keeps_the_previous_output(files, tmp_path, capfd, monkeypatch, fault):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the user's previous result")
    real = media.Mp4Writer._write_one

    def failing(self, rgb):
        if self.frames_written == 5:
            raise OSError(fault, "fake fault", str(self.tmp))
        real(self, rgb)

    monkeypatch.setattr(media.Mp4Writer, "_write_one", failing)
    code, err = run_animate(capfd, files, out)
    one_error_line(code, err, f"cannot write {out}: ")
    assert out.read_bytes() == b"the user's previous result" and leftovers(tmp_path) == []


def test_the_command_line_wrapper_answers_any_disk_fault(capfd):
    for fault, words in [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EBUSY, "busy")]:
        def main(argv):
            raise OSError(fault, "x", "/data/stats.json")
        assert run_cli(main, []) == 2
        err = capfd.readouterr().err
        assert err.startswith("error: cannot write /data/stats.json: ") and words in err and err.count("\n") == 1

    for not_said in (errno.EBADF, errno.EACCES):  # a bug; a permission error that may be a read
        def other(argv):
            raise OSError(not_said, "not said as a write")
        with pytest.raises(OSError):
            run_cli(other, [])


def test_output_directory_that_is_a_mount_point(files, tmp_path, capfd):
    with small_tmpfs(tmp_path / "mnt", "1m") as mnt:
        code, err = run_animate(capfd, files, mnt)
        one_error_line(code, err, "is a mount point", f"--output {mnt / 'frames'}")


def test_a_busy_target_keeps_the_finished_work(files, tmp_path, capfd, monkeypatch):
    """The final rename fails (EBUSY: a mount point the early check could not see): the frames stay,
    under a visible name that the message gives, and the target is as it was."""
    out = tmp_path / "frames"
    out.mkdir()
    real = media.outputs.os.replace

    def busy(src, dst):
        if Path(dst) == out and ".old" not in Path(src).name:
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real(src, dst)

    monkeypatch.setattr(media.outputs.os, "replace", busy)
    code, err = run_animate(capfd, files, out)
    one_error_line(code, err, "Device or resource busy", f"it is kept at {tmp_path / 'frames-1'}")
    assert len(list((tmp_path / "frames-1").glob("*.png"))) == 20 and list(out.iterdir()) == []
    assert leftovers(tmp_path) == []


def test_mra_export_on_a_full_disk_leaves_nothing(files, tmp_path, capfd):
    from export import cli as export_cli
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        capfd.readouterr()
        code = export_cli.main([str(files / "tiny.pth"), "--out", str(disk / "exp"), "--quiet"])
        one_error_line(code, capfd.readouterr().err, f"cannot write to {disk / 'exp'}: No space left on device")
        assert list(disk.iterdir()) == []


def test_saving_a_checkpoint_on_a_full_disk(tmp_path, capfd):
    """torch.save's own writer says a full disk as an obscure RuntimeError: it goes through a Python file,
    so mra-train (and every tool) says it in one line, naming the file, and leaves no temporary."""
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        def main(argv):
            nets.save_model(nets.build_model("lite256"), disk / "model.pth")
        assert run_cli(main, []) == 2
        err = capfd.readouterr().err
        assert err == (f"error: cannot write {disk / 'model.pth'}: no space left on the device; free some space or "
                       "choose another location\n")
        assert list(disk.iterdir()) == []

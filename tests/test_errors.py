"""The common CLI error convention."""
import pytest

from nets.errors import ArgumentParser, UserError, run_cli


def test_user_error_is_one_line_exit_2(capsys):
    def main(argv):
        raise UserError("file not found: x.png\n(check the path)")
    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert err == "error: file not found: x.png (check the path)\n"


def test_argparse_errors_are_one_line(capsys):
    p = ArgumentParser(prog="mra-test")
    p.add_argument("--source", required=True)
    with pytest.raises(SystemExit) as e:
        p.parse_args([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--source" in err


def test_interrupt_and_success(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt
    assert run_cli(interrupted, []) == 130
    assert run_cli(lambda argv: None, []) == 0


def test_ctrl_c_while_a_tool_imports(tmp_path, monkeypatch, capsys):
    """A console script's imports (PyTorch: a second or more) are under the same Ctrl-C rule as its run."""
    from nets.errors import launch

    (tmp_path / "slow_tool.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as e:
        launch("slow_tool")
    assert e.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_console_scripts_import_nothing_heavy_before_the_guard():
    """The entry points named in pyproject.toml live in modules that do not import torch, and the
    real process answers a SIGINT during torch's import with exit 130."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    code = ("import importlib, sys\n"
            f"for spec in {sorted(scripts.values())!r}:\n"
            "    module, _, name = spec.partition(':')\n"
            "    assert callable(getattr(importlib.import_module(module), name)), spec\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'cv2')))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)

    # an existing portrait: mra-live checks its options before torch loads (a missing one would end the run,
    # status 2, before the signal comes), so the run gets as far as torch's import
    portrait = root / "live" / "assets" / "example-portrait.png"
    p = subprocess.Popen([sys.executable, "-c", "import live; live.mra_live()", "--source", str(portrait)], cwd=root,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:  # wait until torch is being loaded
        try:
            if "libtorch" in Path(f"/proc/{p.pid}/maps").read_text():
                break
        except OSError:
            break
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err


def test_warnings_are_one_line(capsys, monkeypatch):
    import warnings

    from nets.errors import one_line_warnings

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    one_line_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("the driving video\n   does not say its frame rate")
    assert capsys.readouterr().err == "warning: the driving video does not say its frame rate\n"


def test_checkpoint_and_config_errors_are_user_errors():
    """Issue 19: nets.CheckpointError and nets.ConfigError are UserErrors, so every place that reports
    a user's error reports them; mra-web's webcam tab called a bad config "internal error"."""
    import asyncio
    import json
    from types import SimpleNamespace

    import nets
    from live.web.app import LiveSocket

    sent = []

    class Socket:
        async def send_text(self, text):
            sent.append(json.loads(text)["message"])

    for error in (nets.ConfigError("unknown preset 'vox512'"), nets.CheckpointError("checkpoint not found: x.pth")):
        asyncio.run(LiveSocket(SimpleNamespace(config=None), Socket())._report(error))
    assert sent == ["error: unknown preset 'vox512'", "error: checkpoint not found: x.pth"]
    assert issubclass(nets.CheckpointError, UserError) and issubclass(nets.ConfigError, UserError)

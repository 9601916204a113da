"""The import contract of pyproject.toml ([tool.importlinter]), checked with import-linter:
layers benchmarks -> live -> export -> nets (downward only), no import circle inside a package, the
layers inside live (apps -> loop / offline animation -> engines -> remote client -> portrait, paste-back)
and media (nets.media) without nets' networks."""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT, str(root / "pyproject.toml"), "--no-cache", "--no-logo"],
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": ""}, capture_output=True, text=True,
                          timeout=300)


def test_the_project_keeps_its_import_contract():
    p = lint_imports(ROOT)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "4 kept, 0 broken" in p.stdout


def test_the_contract_catches_an_upward_import_and_a_circle(tmp_path):
    """The same contract on a small tree with one upward import, one circle (held together by an
    import inside a function), one app importing another and media importing a network reports
    all four."""
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = ["[tool.importlinter]", 'root_packages = ["nets", "export", "live", "benchmarks"]']
    for c in contract["contracts"]:
        lines += ["[[tool.importlinter.contracts]]"] + [f"{k} = {json.dumps(v)}" for k, v in c.items()]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    files = {"nets/geometry.py": "import live.face\n",  # upward
             "export/engine.py": "import export.runtime\n",
             "export/runtime.py": "def f():\n    import export.engine\n",  # circle
             "live/face.py": "import export.engine\n", "benchmarks/fps.py": "import live.face\n",
             "live/live.py": "def main():\n    import live.web.app\n",  # one app importing another
             "live/web/app.py": "import live.loop.pipeline\n", "live/serve.py": "import live.engines\n",
             "live/animate.py": "import live.engines\n", "live/loop/pipeline.py": "import live.pasteback\n",
             "live/engines.py": "import live.remote.client\n", "live/remote/client.py": "import live.remote.connection\n",
             "live/remote/connection.py": "import live.remote.protocol\n",
             "live/remote/protocol.py": "import live.default_model\n", "live/portrait.py": "import live.pasteback\n",
             "live/pasteback.py": "", "live/default_model.py": "",
             "nets/media/video.py": "import nets.model\n", "nets/model.py": ""}  # media importing a network
    for name in files:  # every contract's modules exist
        for k in range(1, len(Path(name).parts)):
            (tmp_path / Path(*Path(name).parts[:k])).mkdir(exist_ok=True)
            (tmp_path / Path(*Path(name).parts[:k]) / "__init__.py").touch()
    for name in ("avd", "background", "blocks", "checkpoint", "config", "flow", "generator", "geometry", "regions",
                 "transfer"):
        (tmp_path / "nets" / f"{name}.py").touch()
    (tmp_path / "nets" / "train").mkdir()
    (tmp_path / "nets" / "train" / "__init__.py").touch()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    p = lint_imports(tmp_path)
    assert p.returncode == 1, p.stdout
    assert "0 kept, 4 broken" in p.stdout
    assert "nets.geometry -> live.face" in p.stdout
    assert "No cycles are allowed in export" in p.stdout and ".runtime -> .engine" in p.stdout
    assert "live.live -> live.web.app" in p.stdout
    assert "nets.media.video -> nets.model" in p.stdout

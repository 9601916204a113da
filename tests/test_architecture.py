"""The import contract of pyproject.toml ([tool.importlinter]), checked with import-linter:
layers benchmarks -> live -> export -> nets (downward only) and no import circle inside a package."""
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
    assert "2 kept, 0 broken" in p.stdout


def test_the_contract_catches_an_upward_import_and_a_circle(tmp_path):
    """The same contract on a small tree with one upward import and one circle (held together
    by an import inside a function) reports both."""
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = ["[tool.importlinter]", 'root_packages = ["nets", "export", "live", "benchmarks"]']
    for c in contract["contracts"]:
        lines += ["[[tool.importlinter.contracts]]"] + [f"{k} = {v!r}".replace("'", '"') for k, v in c.items()]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    files = {"nets/geometry.py": "import live.face\n",  # upward
             "export/engine.py": "import export.runtime\n",
             "export/runtime.py": "def f():\n    import export.engine\n",  # circle
             "live/face.py": "import export.engine\n", "benchmarks/fps.py": "import live.face\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / (Path(name).parent / "__init__.py")).touch()
        (tmp_path / name).write_text(text)
    p = lint_imports(tmp_path)
    assert p.returncode == 1, p.stdout
    assert "0 kept, 2 broken" in p.stdout
    assert "nets.geometry -> live.face" in p.stdout
    assert "No cycles are allowed in export" in p.stdout and ".runtime -> .engine" in p.stdout

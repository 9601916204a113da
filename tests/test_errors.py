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

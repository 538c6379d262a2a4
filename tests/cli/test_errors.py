"""The error policy of `splitfed`: a `SplitfedError` (the user's to fix) is one line and exit 2;
anything else is a bug and keeps its traceback; Ctrl-C is exit 130."""

import subprocess
import sys

import pytest

import splitfed.cli.main as cli
import splitfed.cli.privacy as privacy_cli
from splitfed.client.link import HandshakeRejected, ServerLost, ServerRefused, ServerUnreachable
from splitfed.config.fields import ConfigError
from splitfed.data.partition import PartitionError
from splitfed.data.records import DataError
from splitfed.errors import AlreadyExistsError, MissingFileError, MissingPackageError, SplitfedError, UsageError
from splitfed.eval.results import ReportError
from splitfed.eval.runner import RunDirError
from splitfed.models.checkpoint import CheckpointError
from splitfed.models.layout import CutError, UnsupportedModelError
from splitfed.models.local import ModelDirError
from splitfed.models.pretrained import ModelPackageMissing
from splitfed.models.split import SplitMismatchError
from splitfed.privacy.calibrate import CalibrationError
from splitfed.privacy.ledger import LedgerError
from splitfed.rag.store import StoreError
from splitfed.transport.keys import KeyFileError
from splitfed.transport.sockets import ListenError, NotSent

# each user-facing error and the standard base it had before (callers that catch that still work)
USER_ERRORS = {
    ConfigError: ValueError,
    DataError: ValueError,
    PartitionError: ValueError,
    CheckpointError: FileNotFoundError,
    ModelDirError: ValueError,
    UnsupportedModelError: ValueError,
    SplitMismatchError: ValueError,
    CutError: ValueError,
    StoreError: FileNotFoundError,
    ReportError: ValueError,
    RunDirError: ValueError,
    ListenError: ConnectionError,
    NotSent: ConnectionError,
    KeyFileError: FileNotFoundError,
    LedgerError: ValueError,
    CalibrationError: ValueError,
    ServerLost: ConnectionError,
    ServerUnreachable: ConnectionError,
    HandshakeRejected: ConnectionError,
    ServerRefused: RuntimeError,
    ModelPackageMissing: ImportError,
    UsageError: ValueError,
    MissingFileError: FileNotFoundError,
    AlreadyExistsError: FileExistsError,
    MissingPackageError: ImportError,
}


def _raising(exc: BaseException):
    def command(args):
        raise exc

    return command


@pytest.mark.parametrize("cls", list(USER_ERRORS), ids=lambda c: c.__name__)
def test_each_user_error_is_one_line_and_exit_2(cls, monkeypatch, capsys):
    assert issubclass(cls, SplitfedError) and issubclass(cls, USER_ERRORS[cls])
    monkeypatch.setattr(cli, "_cmd_split_info", _raising(cls("what was expected, and what came")))
    assert cli.main(["split-info"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "splitfed: error: what was expected, and what came\n"


@pytest.mark.parametrize(
    "exc",
    [TypeError("bad operand"), KeyError("k"), ValueError("plain"), RuntimeError("plain"), FileNotFoundError("x")],
    ids=lambda e: type(e).__name__,
)
def test_a_programming_error_propagates_out_of_main(exc, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_cmd_split_info", _raising(exc))
    with pytest.raises(type(exc)) as raised:
        cli.main(["split-info"])
    assert raised.value is exc and "splitfed: error" not in capsys.readouterr().err


@pytest.mark.process
def test_a_programming_error_shows_its_traceback_and_does_not_exit_2():
    script = (
        "import sys\n"
        "import splitfed.cli.main as cli\n"
        "def broken(args):\n"
        "    return {}['missing']\n"
        "cli._cmd_split_info = broken\n"
        "sys.exit(cli.main(['split-info']))\n"
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "Traceback (most recent call last)" in p.stderr and "KeyError: 'missing'" in p.stderr, p.stderr
    assert "splitfed: error" not in p.stderr


def test_ctrl_c_is_exit_130_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_cmd_split_info", _raising(KeyboardInterrupt()))
    assert cli.main(["split-info"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1


def test_privacy_commands_follow_the_same_policy(monkeypatch, capsys):
    def compute(args):
        raise CalibrationError("epsilon 0.01 is out of reach")

    monkeypatch.setattr(privacy_cli, "_ldp", compute)
    assert cli.main(["privacy", "ldp", "--epsilon", "1", "--delta", "1e-5"]) == 2
    assert capsys.readouterr().err == "splitfed privacy: error: epsilon 0.01 is out of reach\n"

    monkeypatch.setattr(privacy_cli, "_ldp", _raising(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["privacy", "ldp", "--epsilon", "1", "--delta", "1e-5"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["models", "inspect", "no-such-model-dir"], "no-such-model-dir"),
        (["attack", "report", "no-such-run"], "results.json not found"),
        (["rag", "index"], "give DOCS... and --name NAME"),
        (["privacy", "report", "no-such-run", "--no-plot"], "no privacy ledgers"),
    ],
)
def test_user_mistakes_on_the_command_line_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("splitfed") and message in err, err

"""Every numeric option of every `splitfed privacy` command at its edges: exit 0 with a finite
answer (valid JSON, every number finite) or exit 2 with one line naming the option; never a traceback."""

import json
import math

import pytest

from splitfed.cli.main import main
from splitfed.privacy.events import GaussianEvent, Party
from splitfed.privacy.ledger import Ledger, LedgerEntry
from splitfed.privacy.report import write_settings

# command -> (a valid argv, the numeric options)
COMMANDS = {
    "epsilon": (
        ["--noise-multiplier", "1.1", "--sample-rate", "0.01", "--steps", "100", "--delta", "1e-5"],
        ["--noise-multiplier", "--sample-rate", "--steps", "--delta"],
    ),
    "noise": (
        ["--epsilon", "1", "--delta", "1e-5", "--sample-rate", "0.01", "--steps", "100"],
        ["--epsilon", "--delta", "--sample-rate", "--steps"],
    ),
    "ldp": (
        ["--epsilon", "4", "--delta", "1e-5", "--releases", "2", "--clip", "1", "--unit", "token", "--max-length", "8"],
        ["--epsilon", "--delta", "--releases", "--clip", "--max-length"],
    ),
    "report": (["--no-plot"], ["--delta"]),
}
EDGES = [
    "0",
    "-0.0",
    "-1",
    "1",
    "0.5",
    "1e-300",
    "1e-320",  # subnormal
    "5e-324",
    "1e-12",
    "1e12",
    "1e308",
    "1.7976931348623157e308",
    "1e309",  # overflows to inf
    "nan",
    "inf",
    "-inf",
    "99999999999999999999999",
    "9" * 400,
    "2.5",
    "abc",
    # the ends of the accepted ranges
    "0.01",
    "1e6",
    "1e-9",
    "1e-100",
    "1e-6",
    "1e3",
    "1000000000",
    "0.999999",
]
CASES = [(cmd, opt, v) for cmd, (_, opts) in COMMANDS.items() for opt in opts for v in EDGES]


def _argv(cmd, opt, value, run_dir):
    base, _ = COMMANDS[cmd]
    argv = list(base)
    if opt in argv:
        i = argv.index(opt)
        argv[i + 1] = value
    else:
        argv += [opt, value]
    if cmd == "report":
        argv = [str(run_dir), *argv]
    return ["privacy", cmd, *argv, "--json"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    write_settings(run / "privacy", delta=1e-5, accountant="rdp", max_epsilon=0.0)
    entry = LedgerEntry(0, "activation_ldp", Party.SERVER, GaussianEvent(2.0, 1), "sequence", 1.0)
    Ledger(run / "privacy" / "client-0.jsonl").append([entry])
    return run


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield obj


@pytest.mark.parametrize(("cmd", "opt", "value"), CASES, ids=[f"{c}{o}={v[:24]}" for c, o, v in CASES])
def test_numeric_edges_end_in_a_finite_answer_or_one_line_exit_2(cmd, opt, value, run_dir, capsys):
    try:
        rc = main(_argv(cmd, opt, value, run_dir))
    except SystemExit as exc:
        rc = exc.code
    captured = capsys.readouterr()
    assert rc in (0, 2), captured.err
    assert "Traceback" not in captured.err
    if rc == 0:
        result = json.loads(captured.out)  # strict: `Infinity` / `NaN` would be refused below
        assert all(math.isfinite(x) for x in _numbers(result)), captured.out
        assert captured.err == ""
    else:
        lines = captured.err.strip().splitlines()
        assert captured.out == "" and len(lines) == 1 and lines[0].startswith("splitfed privacy: error: ")
        # a refused value names the option and the accepted range; a computed refusal says why
        assert f"argument {opt}:" in lines[0] or "out of reach" in lines[0] or "no finite answer" in lines[0]


def test_json_output_is_strict_json(capsys):
    assert main(["privacy", "ldp", "--epsilon", "1", "--delta", "1e-5", "--clip", "1e12", "--json"]) == 0
    out = capsys.readouterr().out
    assert "Infinity" not in out and json.loads(out)["sigma"] > 1e12

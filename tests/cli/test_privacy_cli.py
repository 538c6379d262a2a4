"""`splitfed privacy`: text and JSON output of each command, one-line refusals, a fast `--help`."""

import json
import subprocess
import sys
import time

import pytest

from splitfed.cli.main import main
from splitfed.privacy.calibrate import analytic_gaussian_sigma, gaussian_composition_epsilon
from splitfed.privacy.events import GaussianEvent

MNIST = ["--noise-multiplier", "1.1", "--sample-rate", str(256 / 60000), "--steps", "2000", "--delta", "1e-5"]


def _run(argv, capsys):
    assert main(argv) == 0
    return capsys.readouterr().out


def _json(argv, capsys):
    out = _run([*argv, "--json"], capsys)
    assert len(out.strip().splitlines()) == 1
    return json.loads(out)


def test_epsilon_text_and_json(capsys):
    assert _run(["privacy", "epsilon", *MNIST], capsys).startswith("epsilon 1.045 at delta 1e-05 (rdp accountant)")
    r = _json(["privacy", "epsilon", *MNIST, "--accountant", "prv"], capsys)
    assert round(r["epsilon"], 3) == 0.857 and r["accountant"] == "prv" and r["fallback_reason"] is None
    assert r["steps"] == 2000 and r["noise_multiplier"] == 1.1 and r["delta"] == 1e-5


def test_epsilon_states_a_prv_fallback(capsys):
    argv = ["privacy", "epsilon", "--noise-multiplier", "0.7", "--sample-rate", "0.1", "--steps", "100"]
    out = _run([*argv, "--delta", "1e-5", "--accountant", "prv"], capsys)
    assert out.startswith("epsilon 16.42 at delta 1e-05 (RDP bound: the prv accountant fell back because PRV gave")


def test_noise_text_and_json(capsys):
    argv = ["privacy", "noise", "--epsilon", "1", "--delta", "1e-5", "--sample-rate", str(256 / 60000)]
    out = _run([*argv, "--steps", "2000"], capsys)
    assert out.startswith("noise multiplier 1.124")
    assert "  check: it spends epsilon 0.999" in out and out.rstrip().endswith("(rdp accountant)")
    r = _json([*argv, "--steps", "2000"], capsys)
    assert r["epsilon_spent"] <= 1.0 and r["noise_multiplier"] == pytest.approx(1.124, abs=1e-3)


def test_ldp_sequence(capsys):
    argv = ["privacy", "ldp", "--epsilon", "8", "--delta", "1e-5", "--releases", "3", "--unit", "sequence"]
    out = _run([*argv, "--clip", "1"], capsys)
    assert out.startswith("unit: sequence") and "(8, 1e-05)-DP per example" in out and "exact: analytic" in out
    r = _json([*argv, "--clip", "0.5"], capsys)
    assert r["unit"] == "sequence" and r["sensitivity"] == 1.0 and r["sigma"] == r["noise_multiplier"]
    assert gaussian_composition_epsilon([GaussianEvent(r["noise_multiplier"], 3)], 1e-5) == pytest.approx(8.0)
    one = _json(["privacy", "ldp", "--epsilon", "8", "--delta", "1e-5"], capsys)
    assert one["calibration"] == "analytic" and one["noise_multiplier"] == analytic_gaussian_sigma(8.0, 1e-5)


def test_ldp_token_states_the_unit_and_the_per_example_epsilon(capsys):
    argv = ["privacy", "ldp", "--epsilon", "8", "--delta", "1e-5", "--unit", "token", "--max-length", "64"]
    out = _run(argv, capsys)
    assert out.startswith("unit: token") and "per activation vector (one position), NOT per example" in out
    assert "per example of up to T = 64 positions: epsilon" in out
    r = _json([*argv, "--releases", "2"], capsys)
    pe = r["per_example"]
    assert r["guarantee"] == "per activation vector (position)" and pe["max_length"] == 64
    assert pe["noise_multiplier"] == pytest.approx(r["noise_multiplier"] / 8) and pe["sensitivity"] == 16.0
    assert pe["epsilon"] == gaussian_composition_epsilon([GaussianEvent(pe["noise_multiplier"], 2)], 1e-5) > 8


@pytest.mark.parametrize(
    "argv,message",
    [
        (["ldp", "--epsilon", "abc", "--delta", "1e-5"], "argument --epsilon: expected a number, got 'abc'"),
        (["ldp", "--epsilon", "0", "--delta", "1e-5"], "argument --epsilon: must be a number in [1e-06, 1000], got 0"),
        (
            ["ldp", "--epsilon", "-1", "--delta", "1e-5"],
            "argument --epsilon: must be a number in [1e-06, 1000], got -1",
        ),
        (["ldp", "--epsilon", "inf", "--delta", "1e-5"], "argument --epsilon: expected a finite number, got 'inf'"),
        (["ldp", "--epsilon", "1", "--delta", "1"], "argument --delta: must be a number in [1e-100, 1), got 1"),
        (["ldp", "--epsilon", "1", "--delta", "0"], "argument --delta: must be a number in [1e-100, 1), got 0"),
        (["ldp", "--epsilon", "1", "--delta", "1e-5", "--releases", "0"], "argument --releases: must be an integer"),
        (["ldp", "--epsilon", "1", "--delta", "1e-5", "--unit", "token"], "--unit token needs --max-length T"),
        (["ldp", "--epsilon", "1"], "the following arguments are required: --delta"),
        (
            ["epsilon", *MNIST[:2], "--sample-rate", "1.5", *MNIST[4:]],
            "argument --sample-rate: must be a number in [1e-09, 1]",
        ),
        (
            ["epsilon", *MNIST[:2], "--sample-rate", "0", *MNIST[4:]],
            "argument --sample-rate: must be a number in [1e-09, 1]",
        ),
        (
            ["epsilon", *MNIST[:4], "--steps", "0", *MNIST[6:]],
            "argument --steps: must be an integer in [1, 1e+09], got 0",
        ),
        (["epsilon", *MNIST[:4], "--steps", "2.5", *MNIST[6:]], "argument --steps: expected an integer in [1, 1e+09]"),
        (["epsilon", *MNIST, "--accountant", "gdp"], "argument --accountant: invalid choice: 'gdp'"),
        (
            ["noise", "--epsilon", "1e-6", "--delta", "1e-5", "--sample-rate", "1", "--steps", "1000000"],
            "epsilon 1e-06 at delta 1e-05 is out of reach",
        ),
    ],
)
def test_refused_input_is_one_line_and_exit_2(argv, message, capsys):
    try:
        rc = main(["privacy", *argv])
    except SystemExit as exc:
        rc = exc.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2 and captured.out == "" and "Traceback" not in captured.err
    assert len(lines) == 1 and lines[0].startswith("splitfed privacy: error: ") and message in lines[0]


@pytest.mark.process
def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import contextlib, io, json, sys\n"
        "from splitfed.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['privacy', '--help'])\n"
        "heavy = ('torch', 'transformers', 'opacus', 'numpy', 'scipy')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    wall = time.perf_counter() - start
    assert json.loads(out.stdout) == [] and wall < 0.5, (out.stdout, wall)

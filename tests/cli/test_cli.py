"""The `splitfed` command: help, errors without tracebacks, and the in-process demo (slow)."""

import subprocess
import sys
from pathlib import Path

import pytest

from splitfed.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "models" in out and "split-info" in out and "data" in out


def test_models_list(capsys, tmp_path):
    assert main(["models", "list", "--cache-dir", str(tmp_path)]) == 0
    assert "smollm2-135m" in capsys.readouterr().out


def test_bad_cut_is_a_clean_error(capsys, tmp_path):
    assert main(["split-info", "--model", "tiny-llama", "--cut", "3", "9", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "invalid cut (3, 9): need 0 <= a < b <= 4" in err and "Traceback" not in err


def test_split_info_counts_parameters(capsys, tmp_path):
    assert main(["split-info", "--model", "tiny-llama", "--cut", "1", "3", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "trunk   server   [1, 3)" in out


def test_data_partition(capsys):
    assert main(["data", "partition", "--clients", "4", "--alpha", "0.3"]) == 0
    out = capsys.readouterr().out
    assert out.count("client ") == 4 and "600 train reviews" in out


@pytest.mark.process
def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "splitfed.cli.main", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("splitfed ")


@pytest.mark.process
@pytest.mark.slow
def test_inprocess_demo_lowers_perplexity_and_exports(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "finetune_inprocess.py"),
        "--steps",
        "8",
        "--eval-examples",
        "8",
        "--out",
        str(tmp_path),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "matches the split model" in out.stdout
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_server_nproc_below_one_is_a_one_line_error(capsys):
    from splitfed.cli.main import main

    assert main(["server", "--nproc", "0"]) == 2
    err = capsys.readouterr().err
    assert "--nproc must be >= 1, got 0" in err and "Traceback" not in err

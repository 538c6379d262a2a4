"""A run where every party made its own keys on its own: only public files were exchanged."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

from splitfed.cli.main import main
from splitfed.config import dump_toml
from splitfed.transport.roster import load_roster


def _keys(*args: str, cwd: Path) -> str:
    """`splitfed keys ...` run in ``cwd`` (in this process: the CLI itself is tested in tests/cli)."""
    out = io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            assert main(["keys", *args]) == 0
    finally:
        os.chdir(here)
    return out.getvalue()


def _exchange(root: Path, clients: int) -> dict[str, Path]:
    """Each party's keys made in its own directory; public files copied the way e-mail would."""
    dirs = {"server": root / "server", **{f"client-{k}": root / f"hospital-{k}" for k in range(clients)}}
    for name, d in dirs.items():
        d.mkdir(parents=True, exist_ok=True)
        out = _keys("init", name, "--dir", "keys", *(["--no-sign"] if name == "server" else []), cwd=d)
        assert "fingerprint" in out and f"keys/{name}.key" in out
    inbox = root / "exchanged"  # only public files ever land here
    inbox.mkdir()
    for name, d in dirs.items():
        shutil.copy(d / "keys" / f"{name}.key", inbox)
    client_files = [str(inbox / f"client-{k}.key") for k in range(clients)]
    out = _keys("allow", "--dir", "keys", *client_files, cwd=dirs["server"])
    assert out.count("allowed client-") == clients
    out = _keys("roster", *client_files, "--out", str(inbox / "roster.toml"), cwd=root)
    assert "roster fingerprint" in out
    for k in range(clients):
        _keys("import", "--dir", "keys", str(inbox / "server.key"), cwd=dirs[f"client-{k}"])
    for d in dirs.values():
        shutil.copy(inbox / "roster.toml", d / "roster.toml")
    assert not list(inbox.glob("*secret*"))
    return dirs


def _party_config(run, d: Path, **extra):
    cfg = run.cfg.with_overrides(
        **{"transport.keys_dir": str(d / "keys"), "aggregation.roster": str(d / "roster.toml"), **extra}
    )
    path = d / "run.toml"
    path.write_text(dump_toml(cfg))
    return path


def _start(run, role: str, config: Path, *extra: str):
    args = ["server", "--no-progress"] if role == "server" else ["client", "--no-progress", "--client-id", role[-1]]
    return run._spawn([*args, "--config", str(config), *extra], f"{role}.log")


def test_a_secure_run_with_keys_each_party_made_itself(make_run, tmp_path):
    run = make_run(clients=2, training__rounds=1, aggregation__secure=True)
    dirs = _exchange(tmp_path / "orgs", 2)
    pinned = load_roster(dirs["server"] / "roster.toml").fingerprint
    configs = {name: _party_config(run, d, **{"aggregation.roster_fingerprint": pinned}) for name, d in dirs.items()}
    # the server holds no client secret, a hospital no other party's secret
    for name, d in dirs.items():
        assert sorted(p.name for p in (d / "keys").glob("*secret")) == sorted(
            [f"{name}.key_secret"] + ([] if name == "server" else [f"{name}.sign_secret"])
        )
    server = _start(run, "server", configs["server"])
    clients = [_start(run, f"client-{k}", configs[f"client-{k}"]) for k in range(2)]
    for k, c in enumerate(clients):
        assert run.wait(c) == 0, run.log(f"client-{k}") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    assert "secagg_done" in [m["event"] for m in run.metrics("server")]
    for k in range(2):
        assert (run.run_dir / "clients" / f"client-{k}" / "adapter" / "adapter_model.safetensors").is_file()


def test_a_tampered_roster_is_refused(make_run, tmp_path):
    run = make_run(clients=2, training__rounds=1, aggregation__secure=True)
    dirs = _exchange(tmp_path / "orgs", 2)
    # someone swaps client-0's signing key in hospital-1's copy of the roster for one they hold
    evil = _keys("init", "client-0", "--dir", "evil", cwd=tmp_path)
    assert evil
    from splitfed.transport.keys import read_public_key_file

    forged = read_public_key_file(tmp_path / "evil" / "client-0.key").sign.hex()
    roster = dirs["client-1"] / "roster.toml"
    good = load_roster(roster)
    roster.write_text(roster.read_text().replace(good.entries[0].sign.hex(), forged))
    configs = {name: _party_config(run, d) for name, d in dirs.items()}
    server = _start(run, "server", configs["server"])
    c1 = _start(run, "client-1", configs["client-1"])
    assert run.wait(c1, timeout=60) == 2
    log = run.log("client-1")
    assert "different secure-aggregation roster" in log, log
    assert good.fingerprint in log and load_roster(roster).fingerprint in log
    # pinned in the config, the tampered copy is refused before anything is sent
    pinned = _party_config(run, dirs["client-1"], **{"aggregation.roster_fingerprint": good.fingerprint})
    c1 = _start(run, "client-1", pinned)
    assert run.wait(c1, timeout=60) == 2
    assert "this is not the roster the parties agreed on" in run.log("client-1")
    server.kill()


def test_a_config_mismatch_names_the_differing_keys(make_run):
    run = make_run(clients=1, training__rounds=1)
    server = run.server()
    other = run.root / "other.toml"
    other.write_text(dump_toml(run.cfg.with_overrides(**{"training.lr": 0.125, "lora.bottom.r": 2})))
    c = run._spawn(["client", "--no-progress", "--client-id", "0", "--config", str(other)], "client-0.log")
    assert run.wait(c, timeout=60) == 2
    log = run.log("client-0")
    assert f"training.lr (server: {run.cfg.training.lr})" in log, log
    assert f"lora.bottom.r (server: {run.cfg.lora.bottom.r})" in log
    server.kill()

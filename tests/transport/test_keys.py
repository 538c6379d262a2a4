"""CURVE key files."""

import stat

import pytest

from splitfed.cli.main import main
from splitfed.transport import allowed_clients, generate_keys, load_keypair
from splitfed.transport.keys import KeyFileError


def test_generate_keys_permissions_and_allow_list(tmp_path):
    d = generate_keys(tmp_path / "keys", 2)
    for name in ("server", "client-0", "client-1"):
        public, secret = load_keypair(d, name)
        assert len(public) == len(secret) == 40
        assert stat.S_IMODE((d / f"{name}.key_secret").stat().st_mode) == 0o600
    assert sorted(allowed_clients(d).values()) == ["client-0", "client-1"]
    with pytest.raises(FileExistsError, match="already holds keys"):
        generate_keys(d, 2)
    with pytest.raises(KeyFileError, match="splitfed keys generate"):
        load_keypair(d, "client-7")


def test_cli_keys_generate(tmp_path, capsys):
    assert main(["keys", "generate", "--dir", str(tmp_path / "k"), "--clients", "2"]) == 0
    out = capsys.readouterr().out
    assert "client-1: fingerprint" in out and "client-2" not in out
    assert main(["keys", "generate", "--dir", str(tmp_path / "k"), "--clients", "2"]) == 2
    assert "--force" in capsys.readouterr().err

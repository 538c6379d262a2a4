"""Per-party key files, the allow-list built from public files, and the secure-aggregation roster."""

from __future__ import annotations

import stat

import pytest

from splitfed.config import RunConfig
from splitfed.server.validate import config_difference
from splitfed.transport.keys import (
    KeyFileError,
    allowed_clients,
    create_party_keys,
    install_public_keys,
    key_fingerprint,
    load_keypair,
    load_signing_key,
    read_public_key_file,
)
from splitfed.transport.roster import load_roster, roster_from_key_files, write_roster


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_party_makes_its_own_keys_and_only_the_public_file_moves(tmp_path):
    key = create_party_keys(tmp_path / "h0", "client-0")
    assert _mode(tmp_path / "h0" / "client-0.key_secret") == 0o600
    assert _mode(tmp_path / "h0" / "client-0.sign_secret") == 0o600
    assert _mode(tmp_path / "h0") == 0o700
    text = key.path.read_text()
    assert "secret" not in text.lower().replace("never", "")  # the comment says nothing secret is in it
    again = read_public_key_file(key.path)
    assert again == key
    public, _ = load_keypair(tmp_path / "h0", "client-0")
    assert public.decode() == key.curve
    from crypto.sign import public_key

    assert public_key(load_signing_key(tmp_path / "h0", "client-0")) == key.sign
    with pytest.raises(FileExistsError, match="--force"):
        create_party_keys(tmp_path / "h0", "client-0")
    assert create_party_keys(tmp_path / "h0", "client-0", overwrite=True).curve != key.curve


def test_fingerprints_are_short_stable_and_differ_between_keys(tmp_path):
    a, b = create_party_keys(tmp_path, "client-0"), create_party_keys(tmp_path, "client-1")
    assert len(a.fingerprint) == 19 and a.fingerprint.count(" ") == 3
    assert a.fingerprint != b.fingerprint
    assert key_fingerprint(a.curve) == key_fingerprint(a.curve.encode()) == a.fingerprint
    assert a.fingerprint in a.path.read_text()


@pytest.mark.parametrize(
    "text, match",
    [
        ('curve\n    public-key = "short"\n', "40 z85"),
        ("hello\n", "not a key file"),
        ('curve\n    public-key = "{k}"\n    secret-key = "{k}"\n', "SECRET"),
        ('metadata\n    sign-key = "abcd"\ncurve\n    public-key = "{k}"\n', "64 hex"),
        ('metadata\n    name = "../evil"\ncurve\n    public-key = "{k}"\n', "party name"),
    ],
)
def test_bad_public_key_files_are_refused_with_the_reason(tmp_path, text, match):
    good = create_party_keys(tmp_path / "k", "client-0")
    bad = tmp_path / "bad.key"
    bad.write_text(text.format(k=good.curve))
    with pytest.raises(KeyFileError, match=match):
        read_public_key_file(bad)


def test_the_allow_list_is_built_from_the_clients_public_files(tmp_path):
    files = [create_party_keys(tmp_path / f"h{k}", f"client-{k}").path for k in range(2)]
    installed = install_public_keys(tmp_path / "server" / "allowed", files)
    assert [k.name for k in installed] == ["client-0", "client-1"]
    assert allowed_clients(tmp_path / "server") == {k.curve: k.name for k in installed}
    install_public_keys(tmp_path / "server" / "allowed", files[:1])  # the same key again: fine
    other = create_party_keys(tmp_path / "x", "client-0")  # a different key under a known name
    with pytest.raises(FileExistsError, match="another key for client-0"):
        install_public_keys(tmp_path / "server" / "allowed", [other.path])
    copy = tmp_path / "copy" / "client-5.key"
    copy.parent.mkdir()
    copy.write_text(files[0].read_text().replace('name = "client-0"', 'name = "client-5"'))
    with pytest.raises(KeyFileError, match="same key"):
        install_public_keys(tmp_path / "other", [files[0], copy])


def test_the_roster_round_trips_and_its_fingerprint_covers_the_content_only(tmp_path):
    files = [create_party_keys(tmp_path / f"h{k}", f"client-{k}").path for k in range(3)]
    roster = roster_from_key_files(files)
    path = write_roster(tmp_path / "roster.toml", roster)
    loaded = load_roster(path)
    assert loaded.entries == roster.entries and loaded.fingerprint == roster.fingerprint
    assert loaded.identity_keys == {k: read_public_key_file(f).sign for k, f in enumerate(files)}
    path.write_text("# a comment\n" + path.read_text().replace("\n\n", "\n\n\n"))
    assert load_roster(path).fingerprint == roster.fingerprint
    assert loaded.matches(roster.fingerprint) and loaded.matches(roster.digest)
    assert loaded.matches(roster.fingerprint.replace(" ", "").upper())
    # one client's signing key swapped: another fingerprint
    other = create_party_keys(tmp_path / "x", "client-1")
    text = path.read_text().replace(roster.entries[1].sign.hex(), other.sign.hex())
    path.write_text(text)
    tampered = load_roster(path)
    assert tampered.fingerprint != roster.fingerprint and not tampered.matches(roster.fingerprint)
    loaded.require(3)
    with pytest.raises(KeyFileError, match="missing client-3"):
        loaded.require(4)
    with pytest.raises(KeyFileError, match="not in the run: client-2"):
        loaded.require(2)


def test_roster_errors_name_the_file_and_entry(tmp_path):
    server = create_party_keys(tmp_path / "s", "server", sign=False)
    with pytest.raises(KeyFileError, match="named client-K"):
        roster_from_key_files([server.path])
    unsigned = create_party_keys(tmp_path / "u", "client-0", sign=False)
    with pytest.raises(KeyFileError, match="no signing key"):
        roster_from_key_files([unsigned.path])
    bad = tmp_path / "roster.toml"
    bad.write_text('[[client]]\nid = 1\nname = "client-0"\nsign = "00"\ncurve = "x"\n')
    with pytest.raises(KeyFileError, match=r"#1: expected id = K"):
        load_roster(bad)
    with pytest.raises(KeyFileError, match="no secure-aggregation roster"):
        load_roster(tmp_path / "missing.toml")


def test_a_config_mismatch_names_the_differing_keys_and_the_servers_values():
    server = RunConfig()
    client = server.with_overrides(**{"training.lr": 0.5, "training.local_steps": 7, "run.dir": "elsewhere"})
    meta = {"config_keys": client.key_digests()}
    text = config_difference(server, server.key_digests(), meta["config_keys"], "client-1")
    assert f"training.lr (server: {server.training.lr})" in text
    assert "training.local_steps" in text and "run.dir" not in text
    assert "client-1" in text
    # hostile or old clients: no digests, or nonsense, still one clear sentence
    assert "different configuration" in config_difference(server, server.key_digests(), None, "client-1")
    nonsense = {"x" * 500: 3}
    assert "different configuration" in config_difference(server, server.key_digests(), nonsense, "client-1")
    extra = {"config_keys": {**server.key_digests(), "future.key": "00"}}
    assert "keys only client-1 knows: 'future.key'" in config_difference(
        server, server.key_digests(), extra["config_keys"], "client-1"
    )
    deep = server.with_overrides(**{"lora.bottom.r": 4})
    text = config_difference(server, server.key_digests(), deep.key_digests(), "client-1")
    assert f"lora.bottom.r (server: {server.lora.bottom.r})" in text and "lora.top" not in text
    # the digests themselves: one per agreed key, none for local keys
    digests = server.key_digests()
    assert "training.lr" in digests and "transport.keys_dir" not in digests and "aggregation.roster" not in digests
    assert "aggregation.roster_fingerprint" in digests

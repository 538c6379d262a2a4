"""Parties index their own files with their own keys; a querier with its own pair asks them over CURVE.

Two parties and two queriers, each with keys made separately (only public key files are
copied); the parties are real processes on loopback and embed with the bundled MiniLM.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from splitfed_testing import free_port

from splitfed.cli.main import main
from splitfed.data.records import DataError
from splitfed.rag.config import load_party_config, load_querier_config
from splitfed.rag.documents import Fields, read_documents
from splitfed.rag.querier import Querier
from splitfed.rag.store import VectorStore
from splitfed.transport.keys import install_public_keys, read_public_key_file

HOSPITAL = {
    "flu.txt": "Influenza season\nFlu cases rose sharply in the winter months; vaccination clinics opened early.\n",
    "wards/knee.md": "# Knee replacement\n\nRecovery after knee replacement surgery takes about six weeks of physio.\n",
    "wards/notes.jsonl": json.dumps({"id": "n1", "title": "Night shift", "text": "Nurses on the night shift"})
    + "\n\n"
    + json.dumps({"text": "The cafeteria menu changed to include vegetarian lunches."})
    + "\n",
}
BANK = {
    "rates.md": "Mortgage rates\nThe bank raised mortgage interest rates by half a percent.\n",
    "fraud.jsonl": json.dumps({"doc": "Card fraud is flagged by anomaly detection on transactions.", "name": "Fraud"})
    + "\n",
}


def write_tree(root, files):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_a_folder_of_txt_md_and_jsonl_files(tmp_path):
    docs = read_documents([write_tree(tmp_path / "docs", HOSPITAL)]).docs
    assert [(d.doc_id, d.title) for d in docs] == [
        ("flu.txt", "Influenza season"),
        ("wards/knee.md", "Knee replacement"),
        ("n1", "Night shift"),
        ("wards/notes.jsonl:3", "The cafeteria menu changed to include vegetarian lunches."),  # line 3, no title
    ]
    assert docs[0].text.startswith("Flu cases rose") and docs[1].text.startswith("Recovery after")
    bank = read_documents([write_tree(tmp_path / "bank", BANK)], fields=Fields(text="doc", title="name")).docs
    assert [(d.doc_id, d.title) for d in bank] == [("fraud.jsonl:1", "Fraud"), ("rates.md", "Mortgage rates")]
    one = tmp_path / "one.txt"
    one.write_text("just one line")
    assert [(d.doc_id, d.title, d.text) for d in read_documents([one]).docs] == [("one.txt", "one", "just one line")]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, r"no documents found"),
        ({"a.txt": "  \n"}, r"no documents found"),
        ({"a.txt": "x", "b.pdf": "%PDF"}, r"b\.pdf: unsupported file type '\.pdf'; expected one of \.txt, \.md"),
        ({"d.jsonl": '{"text": "ok"}\n{"text": "no end\n'}, r"d\.jsonl line 2: invalid JSON"),
        ({"d.jsonl": '{"text": "ok"}\n[1, 2]\n'}, r"d\.jsonl line 2: expected a JSON object, got list"),
        ({"d.jsonl": '\n{"body": "x"}\n'}, r"d\.jsonl line 2: no 'text' field \(the document text\); fields found"),
        ({"d.jsonl": '{"text": 5}\n'}, r"d\.jsonl line 1: 'text': expected non-empty text, got int 5"),
        ({"d.jsonl": '{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n'}, r"document id '1' appears twice"),
    ],
)
def test_errors_name_the_file_and_line(tmp_path, files, message):
    root = write_tree(tmp_path / "docs", files)
    root.mkdir(exist_ok=True)
    with pytest.raises(DataError, match=message):
        read_documents([root])


def test_cli_errors_are_one_line_and_nothing_is_written(tmp_path, capsys):
    bad = write_tree(tmp_path / "docs", {"a.jsonl": '{"title": "t"}\n'})
    assert main(["rag", "index", str(bad), "--name", "a", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("splitfed: error: ") and "a.jsonl line 1: no 'text' field" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert main(["rag", "index", str(tmp_path / "missing"), "--name", "a"]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
    assert main(["rag", "index", str(bad)]) == 2
    assert "give DOCS... and --name NAME" in capsys.readouterr().err


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Two parties, each `rag index` on its own files and keys; queriers set up with `rag add-party`."""
    tmp = tmp_path_factory.mktemp("deploy")
    ports = {"hospital-a": free_port(), "bank-b": free_port()}
    for name, files, extra in (("hospital-a", HOSPITAL, []), ("bank-b", BANK, ["--text-field", "doc"])):
        docs = write_tree(tmp / name / "docs", files)
        out = tmp / name / "rag"
        args = ["rag", "index", str(docs), "--name", name, "--out", str(out), *extra]
        assert main([*args, "--endpoint", f"tcp://127.0.0.1:{ports[name]}", "--title-field", "name"]) == 0
    # each querier on its own machine; it receives only the parties' PUBLIC files
    for querier in ("querier", "intruder"):
        for name in ports:
            key = tmp / name / "rag" / "keys" / f"{name}.key"
            parties = tmp / querier / "parties.toml"
            args = ["--parties", str(parties), "--endpoint", f"tcp://127.0.0.1:{ports[name]}", "--public-key", str(key)]
            assert main(["rag", "add-party", *args, "--keys-dir", str(tmp / querier / "keys")]) == 0
    # the querier's public file is allowed at both parties, the intruder's only at hospital-a
    install_public_keys(tmp / "hospital-a" / "rag" / "keys" / "allowed", [tmp / "querier" / "keys" / "querier.key"])
    install_public_keys(tmp / "bank-b" / "rag" / "keys" / "allowed", [tmp / "querier" / "keys" / "querier.key"])
    intruder = read_public_key_file(tmp / "intruder" / "keys" / "querier.key")
    allowed_a = tmp / "hospital-a" / "rag" / "keys" / "allowed"
    (allowed_a / "intruder.key").write_text((tmp / "intruder" / "keys" / "querier.key").read_text())
    assert read_public_key_file(allowed_a / "intruder.key").curve == intruder.curve
    procs = []
    for name in ports:
        log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115
        cmd = [
            sys.executable,
            "-m",
            "splitfed.cli.main",
            "rag",
            "party",
            "--config",
            str(tmp / name / "rag" / "party.toml"),
        ]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    yield tmp
    for p in procs:
        p.kill()
        p.wait()


@pytest.mark.process
def test_index_writes_the_partys_own_store_config_and_keys(deployment, capsys):
    tmp = deployment
    root = tmp / "hospital-a" / "rag"
    cfg = load_party_config(root / "party.toml")
    assert (cfg.name, cfg.index, cfg.keys_dir) == ("hospital-a", str(root / "index"), str(root / "keys"))
    assert len(VectorStore.load(cfg.index).docs) == 4
    assert (root / "keys" / "hospital-a.key_secret").stat().st_mode & 0o777 == 0o600
    assert not list((tmp / "querier").rglob("hospital-a.key_secret"))  # no secret moved
    q = load_querier_config(tmp / "querier" / "parties.toml")
    assert (q.keys_dir, q.name) == (str(tmp / "querier" / "keys"), "querier")
    assert [p.name for p in q.parties] == ["hospital-a", "bank-b"]
    own = read_public_key_file(root / "keys" / "hospital-a.key")
    assert read_public_key_file(q.parties[0].public_key).curve == own.curve
    # adding the same party twice is refused; a key file under another name too
    args = ["--parties", str(tmp / "querier" / "parties.toml"), "--endpoint", "tcp://127.0.0.1:1"]
    assert main(["rag", "add-party", *args, "--public-key", str(root / "keys" / "hospital-a.key")]) == 2
    assert "already lists hospital-a" in capsys.readouterr().err
    key = str(root / "keys" / "hospital-a.key")
    assert main(["rag", "add-party", *args, "--public-key", key, "--name", "bank-c"]) == 2
    assert "public key of 'hospital-a', not of 'bank-c'" in capsys.readouterr().err


@pytest.mark.process
def test_query_over_two_parties_with_their_own_keys(deployment):
    from splitfed.rag.embedder import Embedder

    tmp = deployment
    embedder = Embedder()
    stores = {n: VectorStore.load(tmp / n / "rag" / "index") for n in ("hospital-a", "bank-b")}
    querier = Querier.from_config(load_querier_config(tmp / "querier" / "parties.toml"), embedder=embedder)
    querier.timeout_s = 120.0
    try:
        for question, party, doc_id in (
            ("How long is the recovery after knee surgery?", "hospital-a", "wards/knee.md"),
            ("Did the bank change its mortgage interest rate?", "bank-b", "rates.md"),
        ):
            v = embedder.embed([question])[0]
            res = querier.search_vector(v, k=6)
            assert sorted(res.contributed) == ["bank-b", "hospital-a"] and not res.failed
            assert (res.hits[0].party, res.hits[0].doc_id) == (party, doc_id)
            plain = sorted(
                ((float(s.embeddings[i] @ v), n, i) for n, s in stores.items() for i in range(len(s.docs))),
                reverse=True,
            )
            assert [(h.party, h.row) for h in res.hits] == [(n, i) for _, n, i in plain]
            for h, (s, _, _) in zip(res.hits, plain, strict=True):
                assert abs(h.score - s) < 1e-3  # CKKS error
        assert (
            querier.fingerprints["bank-b"]
            == read_public_key_file(tmp / "bank-b" / "rag" / "keys" / "bank-b.key").fingerprint
        )
    finally:
        querier.close()


@pytest.mark.process
def test_a_querier_outside_a_partys_allow_list_gets_nothing_from_it(deployment):
    tmp = deployment
    cfg = load_querier_config(tmp / "intruder" / "parties.toml")
    querier = Querier.from_config(cfg)
    querier.timeout_s = 8.0
    try:
        v = np.ones(384) / np.sqrt(384)
        res = querier.search_vector(v, k=5)
        assert res.contributed == ["hospital-a"]  # it allowed the intruder's key
        assert "no reply" in res.failed["bank-b"]  # the CURVE handshake failed: no reply at all
        assert {h.party for h in res.hits} == {"hospital-a"} and len(res.hits) == 4
    finally:
        querier.close()

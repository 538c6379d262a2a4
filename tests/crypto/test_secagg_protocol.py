"""The SecAgg/SecAgg+ state machines: exact sums under dropouts, aborts, and refusal of bad messages."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from crypto import shamir, sign
from crypto.secagg import (
    ProtocolError,
    RoundConfig,
    SecAggAbort,
    SecAggClient,
    SecAggServer,
    Stage,
    quantize,
    run_local,
)
from crypto.secagg.common import advert_payload
from crypto.secagg.encoding import decode, encode
from crypto.secagg.messages import (
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    RevealedShare,
    ShareInbox,
    UnmaskRequest,
    UnmaskResponse,
)
from crypto.secagg.quantize import quantization_step


def _vectors(n: int, d: int, seed: int = 0) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).normal(0.0, 0.3, size=(n, d)))


def _expected_sum_mod(vectors, survivors, *, seed, clip=1.0, bits=16, modulus_bits=32) -> np.ndarray:
    """Quantise exactly as run_local does (same rng, client order) and sum the survivors modulo 2**k."""
    rng = np.random.default_rng(seed)
    ints = [quantize(v, clip=clip, bits=bits, modulus_bits=modulus_bits, rng=rng)[0] for v in vectors]
    total = sum(ints[i].astype(object) for i in survivors)
    return np.array([int(x) % 2**modulus_bits for x in total], dtype=np.uint64)


def _check(result, vectors, *, seed, clip=1.0, bits=16, modulus_bits=32):
    survivors = list(result.survivors)
    assert np.array_equal(
        result.sum_mod,
        _expected_sum_mod(vectors, survivors, seed=seed, clip=clip, bits=bits, modulus_bits=modulus_bits),
    )
    plain = np.clip(np.asarray(vectors)[survivors], -clip, clip).sum(0)
    assert np.max(np.abs(result.sum - plain)) <= len(survivors) * quantization_step(clip, bits)


# --- run_local: correctness under dropouts ------------------------------------------------------


def test_sum_is_exact_without_dropout():
    vectors = _vectors(8, 300)
    result = run_local(vectors, threshold=5, rng=7)
    assert result.survivors == tuple(range(8))
    assert result.config.dense and result.config.share_threshold == 5
    assert result.report.total == 8 * 300
    _check(result, vectors, seed=7)


@pytest.mark.parametrize(
    "stage", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK], ids=lambda s: s.name
)
def test_dropouts_at_each_stage(stage):
    vectors = _vectors(9, 200, seed=1)
    result = run_local(vectors, threshold=6, drop={stage: {0, 4, 8}}, rng=3)
    # a client that dropped before sending its masked input is left out; one that dropped in UNMASK is included
    expected = set(range(9)) if stage is Stage.UNMASK else set(range(9)) - {0, 4, 8}
    assert set(result.survivors) == expected
    _check(result, vectors, seed=3)


def test_dropouts_at_every_stage_together():
    vectors = _vectors(12, 150, seed=2)
    drop = {Stage.ADVERTISE_KEYS: {1}, Stage.SHARE_KEYS: {3}, Stage.MASKED_INPUT: {5, 6}, Stage.UNMASK: {11}}
    result = run_local(vectors, threshold=7, drop=drop, rng=4)
    assert set(result.survivors) == set(range(12)) - {1, 3, 5, 6}
    _check(result, vectors, seed=4)


@pytest.mark.parametrize("modulus_bits, bits", [(20, 12), (64, 40)])
def test_other_moduli(modulus_bits, bits):
    vectors = _vectors(5, 64, seed=5)
    result = run_local(
        vectors, threshold=3, bits=bits, modulus_bits=modulus_bits, clip=0.5, drop={Stage.MASKED_INPUT: {2}}, rng=1
    )
    _check(result, vectors, seed=1, clip=0.5, bits=bits, modulus_bits=modulus_bits)


def test_sparse_graph_for_large_cohort_with_ten_percent_dropout():
    n = 60
    vectors = _vectors(n, 64, seed=6)
    dropped = set(range(3, n, 10))  # 6 clients, after sharing keys: their pairwise masks must be removed
    result = run_local(vectors, threshold=31, drop={Stage.MASKED_INPUT: dropped}, rng=2)
    config = result.config
    assert not config.dense and config.neighbours < 40
    assert all(len(nbrs) == config.neighbours for nbrs in config.graph.values())
    assert config.share_threshold == config.neighbours // 2 + 1
    assert set(result.survivors) == set(range(n)) - dropped
    _check(result, vectors, seed=2)
    # each client sends shares to its neighbours only, not to everyone
    assert max(result.bytes_sent.values()) < 64 * 4 + (config.neighbours + 2) * 400


@pytest.mark.parametrize("stage", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK])
def test_below_threshold_aborts(stage):
    with pytest.raises(SecAggAbort, match="threshold is 6"):
        run_local(_vectors(8, 10), threshold=6, drop={stage: {0, 1, 2}})


def test_run_local_validates_its_arguments():
    with pytest.raises(ValueError, match="strict majority of the 4 clients, in \\[3, 4\\], received 2"):
        run_local(_vectors(4, 3), threshold=2)
    with pytest.raises(ValueError, match="does not fit modulo 2\\*\\*32"):
        run_local(_vectors(4, 3), threshold=3, bits=31)
    with pytest.raises(ValueError, match="drop\\[UNMASK\\] names client indices \\[9\\]"):
        run_local(_vectors(4, 3), threshold=3, drop={Stage.UNMASK: {9}})
    with pytest.raises(ValueError, match="more than one stage"):
        run_local(_vectors(4, 3), threshold=3, drop={Stage.UNMASK: {1}, Stage.SHARE_KEYS: {1}})


# --- the state machines driven by hand ----------------------------------------------------------


class Round:
    """A small round (5 clients, threshold 3) driven stage by stage through the real codec."""

    def __init__(self, n: int = 5, threshold: int = 3, d: int = 16) -> None:
        self.config = RoundConfig.create(range(n), threshold=threshold, vector_length=d)
        self.ids = [sign.generate_signing_key_pair() for _ in range(n)]
        self.identity_keys = {i: k.public for i, k in enumerate(self.ids)}
        self.inputs = [np.arange(d, dtype=np.uint32) * (i + 1) for i in range(n)]
        self.clients = [
            SecAggClient(
                self.config, i, signing_key=self.ids[i].private, identity_keys=self.identity_keys, vector=self.inputs[i]
            )
            for i in range(n)
        ]
        self.server = SecAggServer(self.config, identity_keys=self.identity_keys)

    def send(self, messages) -> None:
        for m in messages:
            self.server.receive(decode(encode(m)))

    def advertise(self) -> dict:
        self.send(c.advertise() for c in self.clients)
        return self.server.finish_stage()

    def share(self, directories) -> dict:
        self.send(self.clients[i].handle(m) for i, m in directories.items())
        return self.server.finish_stage()

    def mask(self, inboxes, skip=()) -> dict:
        self.send(self.clients[i].handle(m) for i, m in inboxes.items() if i not in skip)
        return self.server.finish_stage()


def test_manual_round_sums_exactly():
    r = Round()
    requests = r.mask(r.share(r.advertise()))
    assert r.server.ready is False and r.server.expected == frozenset(range(5))
    r.send(r.clients[i].handle(m) for i, m in requests.items())
    assert r.server.ready
    result = r.server.finish()
    assert np.array_equal(result.sum_mod, sum(x.astype(np.uint64) for x in r.inputs))
    assert all(c.stage is Stage.DONE for c in r.clients)


def test_tampered_share_ciphertext_is_rejected_and_client_state_is_unchanged():
    r = Round()
    inboxes = r.share(r.advertise())
    genuine = inboxes[0]
    first = genuine.shares[0]
    flipped = bytearray(first.ciphertext)
    flipped[40] ^= 1
    tampered = dataclasses.replace(
        genuine, shares=(EncryptedShare(first.sender, first.recipient, bytes(flipped)), *genuine.shares[1:])
    )
    with pytest.raises(ProtocolError, match=f"share from client {first.sender} failed authentication"):
        r.clients[0].handle(tampered)
    # a share relayed to the wrong recipient fails too (the associated data binds sender and recipient)
    moved = ShareInbox(genuine.round_id, 0, (EncryptedShare(first.sender, 0, inboxes[1].shares[-1].ciphertext),))
    with pytest.raises(ProtocolError, match="failed authentication"):
        r.clients[0].handle(moved)
    assert r.clients[0].stage is Stage.MASKED_INPUT
    assert isinstance(r.clients[0].handle(genuine), MaskedInput)


def test_tampered_revealed_share_makes_the_server_abort():
    r = Round()
    requests = r.mask(r.share(r.advertise()))
    responses = [r.clients[i].handle(m) for i, m in requests.items()]
    victim = responses[0]
    share = shamir.Share.from_bytes(victim.self_mask_shares[0].share)
    bad = RevealedShare(
        victim.self_mask_shares[0].owner, shamir.Share(share.x, (share.y + 1) % shamir.PRIME).to_bytes()
    )
    responses[0] = dataclasses.replace(victim, self_mask_shares=(bad, *victim.self_mask_shares[1:]))
    r.send(responses)
    with pytest.raises(SecAggAbort, match="self-mask seed of client 0"):
        r.server.finish()
    assert r.server.stage is Stage.ABORTED


def test_client_refuses_to_reveal_both_shares_of_the_same_peer():
    r = Round()
    requests = r.mask(r.share(r.advertise()), skip={4})  # client 4 dropped: server may ask for its key share
    honest = requests[0]
    assert 4 in honest.dropped
    greedy = UnmaskRequest(honest.round_id, 0, honest.survivors + (4,), honest.dropped)
    with pytest.raises(SecAggAbort, match="refuses to unmask.*both the self-mask share and the mask-key share"):
        r.clients[0].handle(greedy)
    assert r.clients[0].stage is Stage.ABORTED
    # asking a client to treat itself as dropped is refused as well
    self_drop = UnmaskRequest(honest.round_id, 1, tuple(u for u in requests[1].survivors if u != 1), (1, 4))
    with pytest.raises(SecAggAbort, match="lists it as dropped"):
        r.clients[1].handle(self_drop)
    # and a client answers only one unmask request
    r.clients[2].handle(requests[2])
    with pytest.raises(ProtocolError, match="stage DONE expects no message"):
        r.clients[2].handle(requests[2])


def test_unmask_request_must_classify_every_peer():
    r = Round()
    requests = r.mask(r.share(r.advertise()))
    partial = dataclasses.replace(requests[0], survivors=requests[0].survivors[:-1])
    with pytest.raises(ProtocolError, match="survivors \\+ dropped must be exactly the share holders"):
        r.clients[0].handle(partial)
    too_few = UnmaskRequest(requests[0].round_id, 0, (0, 1), ())
    with pytest.raises(ProtocolError):
        r.clients[0].handle(too_few)


def test_forged_advert_signature_is_rejected_by_server_and_client():
    r = Round()
    adverts = [c.advertise() for c in r.clients]
    a = adverts[1]
    # signed by client 2's identity key instead of client 1's
    forged = dataclasses.replace(
        a, signature=sign.sign(r.ids[2].private, advert_payload(a.round_id, 1, a.encryption_key, a.mask_key))
    )
    with pytest.raises(ProtocolError, match="AdvertiseKeys from client 1: bad signature"):
        r.server.receive(forged)
    swapped = dataclasses.replace(a, mask_key=adverts[2].mask_key)  # keys changed after signing
    with pytest.raises(ProtocolError, match="bad signature"):
        r.server.receive(swapped)
    r.send(adverts)
    directories = r.server.finish_stage()
    d0 = directories[0]
    bad = KeyDirectory(d0.round_id, 0, tuple(forged if x.sender == 1 else x for x in d0.adverts))
    with pytest.raises(ProtocolError, match="AdvertiseKeys from client 1: bad signature"):
        r.clients[0].handle(bad)
    assert r.clients[0].stage is Stage.SHARE_KEYS


def test_messages_are_validated_against_stage_round_and_ids():
    r = Round()
    directories = r.advertise()
    with pytest.raises(ProtocolError, match="expects KeyDirectory, received ShareInbox"):
        r.clients[0].handle(ShareInbox(r.config.round_id, 0, ()))
    with pytest.raises(ProtocolError, match="addressed to client 1, this is client 0"):
        r.clients[0].handle(directories[1])
    with pytest.raises(ProtocolError, match="round_id .* does not match"):
        r.clients[0].handle(dataclasses.replace(directories[0], round_id=bytes(16)))
    replies = {i: r.clients[i].handle(m) for i, m in directories.items()}
    with pytest.raises(ProtocolError, match="expects ShareKeys, received MaskedInput"):
        r.server.receive(MaskedInput(r.config.round_id, 0, np.zeros(16, np.uint32)))
    r.server.receive(replies[0])
    with pytest.raises(ProtocolError, match="duplicate message"):
        r.server.receive(replies[0])
    with pytest.raises(ProtocolError, match="expected one share for each of \\[0, 2, 3, 4\\]"):
        r.server.receive(dataclasses.replace(replies[1], shares=replies[1].shares[:-1]))
    for i in range(1, 5):
        r.server.receive(replies[i])
    inboxes = r.server.finish_stage()
    masked = r.clients[0].handle(inboxes[0])
    with pytest.raises(ProtocolError, match="expected uint32 vector of length 16, received uint32 of length 15"):
        r.server.receive(MaskedInput(r.config.round_id, 0, masked.vector[:15]))
    with pytest.raises(ProtocolError, match="not expected in stage MASKED_INPUT"):
        r.server.receive(MaskedInput(r.config.round_id, 99, masked.vector))
    with pytest.raises(ProtocolError, match="finish\\(\\) closes stage UNMASK, server is in MASKED_INPUT"):
        r.server.finish()


def test_server_asks_only_what_the_protocol_needs():
    r = Round()
    requests = r.mask(r.share(r.advertise()), skip={3})
    assert set(requests) == {0, 1, 2, 4}
    for i, req in requests.items():
        assert set(req.survivors) == {0, 1, 2, 4} and req.dropped == (3,) and req.recipient == i
    responses = {i: r.clients[i].handle(m) for i, m in requests.items()}
    wrong = dataclasses.replace(responses[0], key_shares=())
    with pytest.raises(ProtocolError, match="key_shares must be for \\[3\\], received \\[\\]"):
        r.server.receive(wrong)
    r.send(responses[i] for i in (0, 1, 2))  # client 4 drops during unmask
    result = r.server.finish()
    assert result.survivors == (0, 1, 2, 4) and result.dropped == (3,)
    assert np.array_equal(result.sum_mod, sum(r.inputs[i].astype(np.uint64) for i in (0, 1, 2, 4)))


def test_unmask_with_too_few_answers_aborts():
    r = Round(n=5, threshold=3)
    requests = r.mask(r.share(r.advertise()))
    r.send(r.clients[i].handle(requests[i]) for i in (0, 1))
    with pytest.raises(SecAggAbort, match="only 2 client\\(s\\) answered the unmask request, the threshold is 3"):
        r.server.finish()


def test_client_constructor_validates_input():
    r = Round()
    with pytest.raises(ValueError, match="vector must be a 1-D integer array of length 16"):
        SecAggClient(r.config, 0, signing_key=r.ids[0].private, identity_keys=r.identity_keys, vector=np.zeros(3))
    with pytest.raises(ValueError, match="client id 9 is not in the round"):
        SecAggClient(r.config, 9, signing_key=r.ids[0].private, identity_keys=r.identity_keys, vector=r.inputs[0])
    with pytest.raises(ValueError, match="lacks the public keys of neighbours \\[4\\]"):
        SecAggClient(
            r.config,
            0,
            signing_key=r.ids[0].private,
            identity_keys={i: r.identity_keys[i] for i in range(4)},
            vector=r.inputs[0],
        )


def test_unmask_response_type_is_checked():
    r = Round()
    requests = r.mask(r.share(r.advertise()))
    response = r.clients[0].handle(requests[0])
    assert isinstance(response, UnmaskResponse)
    with pytest.raises(ProtocolError, match="RevealedShare.share: expected 68 bytes"):
        RevealedShare(0, b"short")

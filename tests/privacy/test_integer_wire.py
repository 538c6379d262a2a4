"""The discrete release on the wire: the integers sent are the snapped input plus the draw, exactly.

The client's link (`RemoteLink`) sends through the real codec to a stand-in connection; the
server's checks (`check_activations`, `gradient_encoding`) then rebuild the release bit for bit.
"""

import pytest
import torch

from crypto.dgauss import cdt_sampler
from splitfed.client.link import RemoteLink
from splitfed.client.privacy import ClientPrivacy
from splitfed.config import parse_config
from splitfed.privacy.mechanisms import TorchNoise
from splitfed.server.validate import activations_encoding, check_activations, gradient_encoding
from splitfed.wire import INTEGERS, Header, Message, MsgType, WireError, compress, decode, decompress, encode

B, T, D = 2, 5, 8
SEED = 11


class _Wire:
    """A `Connection` stand-in: decodes what the link sends (real codec) and answers zeros, compressed."""

    session = "s"

    def __init__(self, compression: str = "int8"):
        self.compression = compression
        self.sent: list[Message] = []

    def request(self, header, tensors, *, expect, step):
        msg = decode(encode(header, tensors), max_bytes=1 << 24)
        self.sent.append(msg)
        name = "act" if header.type == MsgType.FORWARD else "grad"
        shape = msg.tensors[name].shape
        return Message(Header(expect, self.session, 0, step), compress(name, torch.zeros(shape), self.compression))


def _cfg(tmp_path, *, compression="int8", **channels):
    return parse_config(
        {
            "run": {"dir": str(tmp_path)},
            "transport": {"compression": compression},
            "data": {"max_length": 8},
            "privacy": {"enabled": True, **channels},
        }
    )


def _batch(scale=4.0):
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(0)) * scale
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 3:] = 0
    return x, mask


def _link(cp: ClientPrivacy, conn: _Wire) -> RemoteLink:
    act_step, grad_step = cp.grid_steps(D)
    return RemoteLink(conn, cp.cfg.transport.compression, D, act_step=act_step, grad_step=grad_step)


CHANNELS = {
    "int16 activations (sequence)": ("activations", {"noise_multiplier": 2.0}, 4.0, torch.int16),
    "int16 gradient (token)": ("gradients", {"noise_multiplier": 2.0, "unit": "token", "clip": 0.5}, 4.0, torch.int16),
    "int32 activations (fine grid)": (
        "activations",
        {"noise_multiplier": 0.01, "unit": "token", "grid_step": 2.0**-16},
        4.0,
        torch.int32,
    ),
}


@pytest.mark.parametrize("channel, settings, scale, dtype", CHANNELS.values(), ids=CHANNELS.keys())
def test_the_integers_on_the_wire_are_the_snapped_input_plus_the_draw(tmp_path, channel, settings, scale, dtype):
    cfg = _cfg(tmp_path, **{channel: {"enabled": True, **settings}})
    cp = ClientPrivacy(cfg, 0, "client-0", n_examples=10, noise=TorchNoise(torch.Generator().manual_seed(SEED)))
    conn, (x, mask) = _Wire(), _batch(scale)
    link = _link(cp, conn)
    if channel == "activations":
        mech, released = cp.activations, cp.release_activations(x, mask)
        link.forward(released.detach(), mask)
        name = "act"
    else:
        mech, released = cp.gradients, cp.release_gradient(x, mask)
        link.backward(released)
        name = "grad"
    msg = conn.sent[-1]
    assert set(msg.tensors) - {"mask"} == {name, f"{name}.step"}  # no int8 compression on this channel

    gamma, delta, sigma2 = mech.grid(D)
    k = mech.quantize(mech.clip_only(x, mask), gamma, delta)  # the snapped input
    z = cdt_sampler(sigma2).sample(k.numel(), TorchNoise(torch.Generator().manual_seed(SEED)).randbytes)
    expected = k + torch.from_numpy(z).reshape(k.shape) * mask.unsqueeze(-1)
    assert msg.tensors[name].dtype == dtype
    assert torch.equal(msg.tensors[name].long(), expected)
    assert float(msg.tensors[f"{name}.step"]) == gamma

    # the server rebuilds the release exactly, with the encoding it derives from the agreed config
    if channel == "activations":
        back, _ = check_activations(msg, cfg, hidden=D)
    else:
        back = decompress("grad", msg.tensors, gradient_encoding(cfg))
    assert back.dtype == torch.float32 and torch.equal(back, released.detach())


def test_evaluation_forwards_and_non_private_channels_keep_the_compression(tmp_path):
    cfg = _cfg(tmp_path, activations={"enabled": True, "noise_multiplier": 2.0})
    cp = ClientPrivacy(cfg, 0, "client-0", n_examples=10, noise=TorchNoise(torch.Generator().manual_seed(SEED)))
    assert cp.grid_steps(D)[1] == 0.0  # the gradient is not noised: compressed as today
    conn, (x, mask) = _Wire(), _batch()
    link = _link(cp, conn)
    link.backward(x)
    assert conn.sent[-1].tensors["grad"].dtype == torch.int8 and gradient_encoding(cfg) == "int8"
    link.train = False  # held-out evaluation: raw activations, no release
    link.forward(x, mask)
    assert conn.sent[-1].tensors["act"].dtype == torch.int8
    assert activations_encoding(cfg, train=False) == "int8"
    check_activations(conn.sent[-1], cfg, hidden=D)


def test_the_float_mechanism_and_a_disabled_privacy_section_keep_the_compression(tmp_path):
    floating = _cfg(tmp_path, activations={"enabled": True, "noise_multiplier": 2.0, "mechanism": "float"})
    assert activations_encoding(floating, train=True) == "int8"
    cp = ClientPrivacy(floating, 0, "client-0", n_examples=10)
    assert cp.grid_steps(D) == (0.0, 0.0)
    off = parse_config(
        {"run": {"dir": str(tmp_path)}, "privacy": {"activations": {"enabled": True, "noise_multiplier": 1.0}}}
    )
    assert activations_encoding(off, train=True) == gradient_encoding(off) == "fp32"


def test_the_server_refuses_a_compressed_training_release_on_an_integer_channel(tmp_path):
    cfg = _cfg(tmp_path, activations={"enabled": True, "noise_multiplier": 2.0})
    assert activations_encoding(cfg, train=True) == INTEGERS
    x, mask = _batch()
    frames = encode(Header(MsgType.FORWARD, meta={"train": True}), {**compress("act", x, "int8"), "mask": mask.byte()})
    with pytest.raises(WireError, match="expected tensors 'act' and 'act.step'"):
        check_activations(decode(frames, max_bytes=1 << 24), cfg, hidden=D)
    step = torch.tensor(2.0**-4)
    wrong = {"act": torch.zeros(B, T, D + 1, dtype=torch.int16), "act.step": step, "mask": mask.byte()}
    with pytest.raises(WireError, match=f"expected shape \\[{B}, {T}, {D}\\]"):
        check_activations(decode(encode(Header(MsgType.FORWARD), wrong), max_bytes=1 << 24), cfg, hidden=D)

"""Test-only fault injection: a client that dies right after its masked input has left.

Run as ``python crashing_client.py RUN_TOML CLIENT_ID``.  It is an ordinary client whose
secure-aggregation uploader exits (code 3, without a word to the server) when the server
asks for the UNMASK stage, i.e. once its masked input is in the server's sum.
"""

from __future__ import annotations

import os
import sys

from crypto.secagg import Stage
from splitfed.aggregation.secure import SecureUpload
from splitfed.client.runtime import Client
from splitfed.config import load_config
from splitfed.transport import client_name, identity_keys, load_signing_key


class DiesAfterMaskedInput(SecureUpload):
    def answer(self, stage: Stage, payload: bytes) -> bytes:
        if stage is Stage.UNMASK:
            os._exit(3)
        return super().answer(stage, payload)


def main(config: str, client_id: str) -> int:
    cfg, k = load_config(config), int(client_id)
    keys = cfg.transport.keys_dir
    uploader = DiesAfterMaskedInput(
        k, cfg.aggregation, signing_key=load_signing_key(keys, client_name(k)), identity_keys=identity_keys(keys)
    )
    Client(cfg, k, uploader=uploader).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

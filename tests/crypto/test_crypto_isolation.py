"""crypto/ is a leaf package: it never imports splitfed, torch or zmq."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import crypto

FORBIDDEN = ("splitfed", "torch", "zmq")


def test_importing_crypto_loads_no_forbidden_module():
    code = (
        "import sys\n"
        "import crypto, crypto.kex, crypto.aead, crypto.prg, crypto.shamir, crypto.sign\n"
        "import crypto.secagg, crypto.secagg.client, crypto.secagg.server, crypto.secagg.local\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "", f"crypto imported {out.stdout.strip()}"


def test_no_source_file_imports_a_forbidden_module():
    root = Path(crypto.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders

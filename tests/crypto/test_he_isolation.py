"""crypto.he stays a leaf: importing it loads no splitfed, torch or zmq module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import crypto.he

FORBIDDEN = ("splitfed", "torch", "zmq")
ALLOWED_THIRD_PARTY = {"numpy", "tenseal", "cryptography"}


def test_importing_crypto_he_loads_no_forbidden_module():
    code = (
        "import sys\n"
        "import crypto.he, crypto.he.common, crypto.he.context, crypto.he.query, crypto.he.scoring\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "", f"crypto.he imported {out.stdout.strip()}"


def test_crypto_he_sources_import_only_stdlib_numpy_tenseal_cryptography():
    offenders = []
    for path in sorted(Path(crypto.he.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in FORBIDDEN or not (
                    top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY or top == "crypto"
                ):
                    offenders.append(f"{path.name}: {name}")
    assert not offenders

"""crypto/ is a leaf package: it imports only the standard library, numpy, cryptography and
tenseal, and never splitfed, torch or zmq."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import crypto

FORBIDDEN = ("splitfed", "torch", "zmq")
ALLOWED_THIRD_PARTY = {"numpy", "tenseal", "cryptography"}


@pytest.mark.process
def test_importing_every_crypto_module_loads_no_forbidden_module():
    code = (
        "import importlib, pkgutil, sys\n"
        "import crypto\n"
        "for m in pkgutil.walk_packages(crypto.__path__, 'crypto.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'crypto.he.scoring' in sys.modules and 'crypto.secagg.server' in sys.modules\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "", f"crypto imported {out.stdout.strip()}"


def test_sources_import_only_stdlib_numpy_cryptography_tenseal():
    offenders = []
    for path in sorted(Path(crypto.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                allowed = top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY or top == "crypto"
                if top in FORBIDDEN or not allowed:
                    offenders.append(f"{path.relative_to(path.parents[1])}: {name}")
    assert not offenders

"""The run_local example in docs/secagg.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "secagg.md"


def test_docs_example_runs(capsys):
    text = DOC.read_text()
    example = text[text.index("## Example") :]
    code = re.search(r"```python\n(.*?)```", example, re.S).group(1)
    exec(compile(code, str(DOC), "exec"), {})
    assert "QuantizeReport(clipped=0" in capsys.readouterr().out

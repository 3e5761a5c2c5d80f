"""The operations docs follow the code: generated files are current, and docs/errors.md
documents exactly the error reasons the sidecar can return, with their codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sidecar.rpc.status import ERROR_DOMAIN
from tests.deploy import generator
from tests.deploy.reasons import grpc_reasons, http_reasons, websocket_reasons

ROOT = Path(__file__).resolve().parent.parent.parent
ERRORS = ROOT / "docs" / "errors.md"
OPERATIONS = ROOT / "docs" / "operations.md"


def section(markdown: str, heading: str) -> str:
    start = markdown.index(f"\n## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start: end if end > 0 else None]


def table_rows(text: str) -> list[list[str]]:
    """Cells of the table rows below the header, backticks removed."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| `"):
            rows.append([c.strip().strip("`") for c in line.strip("|").split("|")])
    return rows


def test_generated_dashboard_rules_and_metrics_reference_are_current() -> None:
    result = subprocess.run([sys.executable, str(generator.PATH), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_reference_lists_every_registered_metric_once() -> None:
    text = OPERATIONS.read_text()
    begin, end = text.index(generator.load().METRICS_BEGIN), text.index(
        generator.load().METRICS_END)
    documented = [row[0] for row in table_rows(text[begin:end])]
    families = generator.load().metric_families()
    assert len(documented) == len(families)
    for family in families:
        assert any(row.startswith(family["exposed"][0]) or row.startswith(family["name"] + "`")
                   for row in documented), family["name"]


def test_every_grpc_error_reason_is_documented_with_its_code_and_nothing_else() -> None:
    in_code = grpc_reasons()
    rows = table_rows(section(ERRORS.read_text(), "gRPC errors (ErrorInfo reasons)"))
    documented = {row[0]: row[1] for row in rows}
    assert len(documented) == len(rows), "a reason is documented twice"
    assert set(in_code) - set(documented) == set(), "undocumented reasons"
    assert set(documented) - set(in_code) == set(), "documented reasons that do not exist"
    for reason, codes in in_code.items():
        assert codes == {documented[reason]}, reason
    for row in rows:
        assert all(cell for cell in row), f"{row[0]}: empty cell"


def test_every_http_and_websocket_error_reason_is_documented() -> None:
    text = ERRORS.read_text()
    http = {row[0] for row in table_rows(section(text, "HTTP error bodies (edge and admin "
                                                       "listeners)"))}
    assert http == http_reasons()
    ws = {row[0] for row in table_rows(section(text, "WebSocket error frames"))}
    assert ws == websocket_reasons()


def test_error_codes_in_the_docs_are_real_grpc_codes() -> None:
    import grpc

    names = {c.name for c in grpc.StatusCode}
    rows = table_rows(section(ERRORS.read_text(), "gRPC errors (ErrorInfo reasons)"))
    assert {row[1] for row in rows} <= names
    assert f"`domain` = `{ERROR_DOMAIN}`" in ERRORS.read_text()

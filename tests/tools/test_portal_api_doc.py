"""docs/portal-api.md is the reference of the API the portal serves."""

from __future__ import annotations

from tools import portal_api_doc


def test_the_committed_reference_is_generated_from_the_current_description():
    assert portal_api_doc.main(["--check"]) == 0, "run: .venv/bin/python -m tools.portal_api_doc"


def test_the_reference_has_every_operation_and_schema():
    spec = portal_api_doc.openapi()
    text = portal_api_doc.render(spec)
    for path, operations in spec["paths"].items():
        for method in operations:
            assert f"### `{method.upper()} {path}`" in text
    for name in spec["components"]["schemas"]:
        assert f"### {name}" in text

"""The job's packages import each other in one direction only.

``schemas`` is the bottom layer (records, tokens, timestamps, metric names both
layers speak); ``transforms`` and ``sinks`` sit beside each other on top of it and
never import each other, except the one composite that fans documents out to the
sinks (``sinks/delivery.py``), which wires routing and status around them;
``pipelines`` wires everything. ``tools`` is development tooling: workers install
only what the job runs, so no job package may import it. A cycle between two
layers is how a module ends up needing a function-local import to load at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JOB_PACKAGES = ("pipelines", "transforms", "sinks", "schemas")
#: (importing package, imported package) pairs that are never allowed.
FORBIDDEN = {
    ("transforms", "sinks"),
    ("sinks", "transforms"),
    ("schemas", "transforms"),
    ("schemas", "sinks"),
    ("schemas", "pipelines"),
    ("transforms", "pipelines"),
    ("sinks", "pipelines"),
}
#: The fan-out to the sinks: a sinks module that may import transforms.
EXCEPTIONS = {("sinks/delivery.py", "transforms")}


def imported_packages(path: Path) -> set[str]:
    """The top-level package of every module ``path`` imports, at module level or
    inside a function (a local import is still a dependency)."""
    packages: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            packages.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
    return packages


def job_modules() -> list[Path]:
    return sorted(path for package in JOB_PACKAGES for path in (ROOT / package).rglob("*.py"))


def violations(path: Path, root: Path = ROOT) -> list[str]:
    relative = path.relative_to(root).as_posix()
    package = relative.split("/")[0]
    found = []
    for imported in sorted(imported_packages(path)):
        if imported == "tools":
            found.append(f"{relative} imports tools (development tooling, not installed on workers)")
        elif (package, imported) in FORBIDDEN and (relative, imported) not in EXCEPTIONS:
            found.append(f"{relative} imports {imported}")
    return found


def test_every_job_package_is_checked():
    modules = job_modules()
    for package in JOB_PACKAGES:
        assert any(path.relative_to(ROOT).parts[0] == package for path in modules), package
    assert (ROOT / "sinks" / "delivery.py").exists()


@pytest.mark.parametrize("path", job_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_module_respects_the_layers(path: Path):
    assert violations(path) == []


def test_the_checker_sees_forbidden_imports(tmp_path: Path):
    """The rule is only as good as its parser: a local import, a ``from`` import
    and a plain import are all caught."""
    (tmp_path / "transforms").mkdir()
    (tmp_path / "sinks").mkdir()
    bad = tmp_path / "transforms" / "bad.py"
    bad.write_text("import tools.bench\n\ndef f():\n    from sinks.rest import WriteToRestApi\n")
    assert violations(bad, tmp_path) == ["transforms/bad.py imports sinks",
                               "transforms/bad.py imports tools (development tooling, not installed on workers)"]
    sink = tmp_path / "sinks" / "rest.py"
    sink.write_text("import transforms.routing\n")
    assert violations(sink, tmp_path) == ["sinks/rest.py imports transforms"]
    fan_out = tmp_path / "sinks" / "delivery.py"
    fan_out.write_text("from transforms.routing import RouteToStreams\n")
    assert violations(fan_out, tmp_path) == []

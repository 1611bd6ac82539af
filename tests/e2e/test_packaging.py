"""What Flink and Dataflow workers install: the job as ``setup.py`` packages it.

Both runners get ``--setup_file`` (``pipelines/submit.py``); Beam's stager then
runs ``python setup.py sdist --dist-dir <dir>`` in the directory of setup.py
(``python -m build --sdist`` when ``build`` is installed, which it is not here)
and stages the tarball, and each worker pip-installs it. So the tarball must
hold every module and schema file of the job, setup.py must require every
third-party package those modules import, and every function the job graph
pickles must unpickle on a worker that only has the installed package.

The sdist is built from a copy of the repository in a temporary directory: run
in the repository it would rewrite ``iot_data_streamer.egg-info/`` there (which
``.gitignore`` ignores). The copy leaves out ``*.egg-info`` like a fresh clone.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from apache_beam.internal import pickler
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipelines.submit import runner_flags
from tests.unit.test_runner_api import DATAFLOW_ARGV, build

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "transforms", "sinks", "schemas")
#: Left out of the copy the sdist is built from: not part of a clone, or build output.
NOT_IN_A_CLONE = {".git", ".venv", "out", "data", "build", "dist", ".pytest_cache", ".ruff_cache"}

#: Third-party imports of the packages that pip only installs because a declared
#: requirement depends on them, and the requirement they come through. They work
#: today, but a new release of the requirement in between may drop them.
TRANSITIVE = {
    "botocore": "boto3",  # sinks/aws.py, kinesis.py, s3.py, retry.py: boto3 depends on it
    # sinks/retry.py, which workers run: only through apache-beam[gcp] ->
    # google-cloud-aiplatform -> google-genai, three levels down.
    "tenacity": "apache-beam",
}
#: The development and test dependencies (requirements-dev.txt): none may reach a worker.
DEV_ONLY = {canonicalize_name(Requirement(line).name)
            for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def _source_files() -> list[str]:
    """The job's files the sdist must carry, relative to the repository."""
    files = []
    for package in PACKAGES:
        files += [p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")
                  if "__pycache__" not in p.parts]
    files += [p.relative_to(ROOT).as_posix() for p in (ROOT / "schemas" / "avro").rglob("*.avsc")]
    return sorted(files)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The tarball Beam's stager builds from ``--setup_file``, as it builds it."""
    work = tmp_path_factory.mktemp("sdist")
    source = work / "source"

    def ignore(directory: str, names: list[str]) -> set[str]:
        left_out = {name for name in names if name == "__pycache__" or name.endswith(".egg-info")}
        return left_out | (NOT_IN_A_CLONE & set(names) if Path(directory) == ROOT else set())

    shutil.copytree(ROOT, source, ignore=ignore)
    dist = work / "dist"
    subprocess.run([sys.executable, "setup.py", "sdist", "--dist-dir", str(dist)], cwd=source, check=True,
                   capture_output=True, text=True, timeout=300)
    (tarball,) = dist.glob("*.tar.gz")
    return tarball


def _members(tarball: Path) -> dict[str, tarfile.TarInfo]:
    """The tarball's files by path below its top directory (name-version/)."""
    with tarfile.open(tarball) as archive:
        return {m.name.split("/", 1)[1]: m for m in archive.getmembers() if m.isfile() and "/" in m.name}


@pytest.fixture(scope="module")
def installed(sdist, tmp_path_factory) -> Path:
    """What pip installs on a worker: the packages ``build_py`` collects from
    the unpacked sdist."""
    work = tmp_path_factory.mktemp("installed")
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    (unpacked,) = (work / "unpacked").iterdir()
    subprocess.run([sys.executable, "setup.py", "build", "--build-base", str(work / "build")], cwd=unpacked,
                   check=True, capture_output=True, text=True, timeout=300)
    return work / "build" / "lib"


def test_sdist_carries_every_module_and_schema(sdist):
    members = _members(sdist)
    assert [path for path in _source_files() if path not in members] == []
    assert "setup.py" in members and "PKG-INFO" in members
    assert _source_files(), "found no source files"


def test_sdist_carries_no_tool_and_no_test(sdist):
    """What workers install is only what workers run: no module of tools/ (local
    harness, sample fleet, bench, DirectRunner workarounds) or tests/."""
    python = [path for path in _members(sdist) if path.endswith(".py") and path != "setup.py"]
    assert python, "the sdist holds no module"
    assert sorted({path.split("/", 1)[0] for path in python}) == sorted(PACKAGES)
    assert [path for path in python if path.startswith(("tools/", "tests/"))] == []


def test_sdist_requires_no_development_dependency(sdist):
    requires = _requires(sdist)
    assert set(requires) == {""}, f"extras reach the sdist: {sorted(requires)}"
    assert {"pytest", "ruff", "moto"} <= DEV_ONLY
    assert {canonicalize_name(r.name) for r in requires[""]} & DEV_ONLY == set()


def test_installed_package_has_every_module_and_schema(installed):
    files = {p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()}
    assert [path for path in _source_files() if path not in files] == []
    assert {path.split("/", 1)[0] for path in files} == set(PACKAGES)


# --- requirements ---------------------------------------------------------------------------------


def _requires(sdist: Path) -> dict[str, list[Requirement]]:
    """The sdist's requirements by extra ("" for install_requires), from its
    egg-info/requires.txt."""
    (path,) = [p for p in _members(sdist) if p.endswith(".egg-info/requires.txt")]
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/", 1)[0]
        text = archive.extractfile(f"{top}/{path}").read().decode()
    sections: dict[str, list[Requirement]] = {"": []}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
            sections.setdefault(section, [])
        elif line:
            sections[section].append(Requirement(line))
    return sections


def _installed_by(requirements: list[Requirement]) -> dict[str, tuple[str, ...]]:
    """Every distribution pip installs for ``requirements`` (as installed in
    this environment) -> the chain of requirements that brings it."""
    found: dict[str, tuple[str, ...]] = {}
    todo = [(r, ()) for r in requirements]
    seen_extras: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement, chain = todo.pop(0)
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen_extras:
            continue
        seen_extras.add(key)
        found.setdefault(name, (*chain, name))
        try:
            nested = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in nested:
            sub = Requirement(text)
            extras = requirement.extras | {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append((sub, (*chain, name)))
    return found


def _imports(path: Path) -> list[str]:
    """Absolute module names ``path`` imports (``from a.b import c`` gives
    ``a.b.c`` then ``a.b``: c may be a module)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
    return names


def _distribution_of(module: str, candidates: list[str]) -> str | None:
    """The distribution among ``candidates`` that holds ``module`` (for
    namespace packages such as ``google``, shared by many)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin in (None, "namespace"):
        return None
    origin = Path(spec.origin).resolve()
    for name in candidates:
        dist = importlib.metadata.distribution(name)
        if any(Path(dist.locate_file(f)).resolve() == origin for f in dist.files or ()):
            return canonicalize_name(name)
    return None


def third_party_imports() -> dict[str, set[str]]:
    """Distribution of every third-party module the packages import -> the
    files importing it."""
    by_top = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            names = _imports(path)
            for name in names:
                top = name.split(".", 1)[0]
                if top in sys.stdlib_module_names or top in PACKAGES or top == "__future__":
                    continue
                candidates = by_top.get(top)
                assert candidates, f"{path.relative_to(ROOT)} imports {name}, which no installed distribution has"
                if len(set(candidates)) == 1:
                    dist = canonicalize_name(candidates[0])
                else:
                    dist = _distribution_of(name, candidates)
                    if dist is None:
                        continue  # "from a.b import c" where c is not a module: a.b follows
                found.setdefault(dist, set()).add(path.relative_to(ROOT).as_posix())
    return found


def test_setup_requires_every_third_party_import(sdist):
    requires = _requires(sdist)
    declared = {canonicalize_name(r.name) for r in requires[""]}
    pip_installs = _installed_by(requires[""])
    imported = third_party_imports()
    # google-cloud-pubsub is declared though no job module imports it: Beam's
    # ReadFromPubSub imports it on the workers.
    assert {"apache-beam", "orjson", "pyarrow", "fastavro", "boto3", "requests", "pyyaml"} <= set(imported)
    assert "google-cloud-pubsub" in declared

    transitive = {dist: pip_installs[dist] for dist in imported if dist not in declared and dist in pip_installs}
    missing = {dist: sorted(files) for dist, files in imported.items() if dist not in pip_installs}
    assert missing == {}, "imported by the job, not installed on a worker"
    # Installed only because a declared requirement needs it: each listed with why.
    assert set(transitive) <= set(TRANSITIVE), transitive
    for dist, chain in transitive.items():
        assert chain[0] == TRANSITIVE[dist], chain


def test_the_job_does_not_import_the_development_packages():
    """The modules the workers and the submit command import leave the
    development dependencies and tools/ alone."""
    modules = sorted({name.replace("-", "_").split("[")[0] for name in DEV_ONLY} | {"tools"})
    code = textwrap.dedent(f"""
        import json, sys
        import pipelines.data_streamer, pipelines.submit, pipelines.redrive, pipelines.backfill
        import pipelines.historic, pipelines.status
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {modules!r})))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            check=True)
    assert json.loads(result.stdout) == []


# --- pickled functions ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataflow_graph() -> beam_runner_api_pb2.Pipeline:
    _, flags = runner_flags(DATAFLOW_ARGV)
    built = build(flags)
    assert built.contacts.refused == []
    return built.proto


def pickled_functions(proto: beam_runner_api_pb2.Pipeline) -> dict[str, bytes]:
    """Every pickled DoFn (ParDo) and CombineFn of the graph by transform label."""
    found = {}
    for transform in proto.components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            fn = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload).do_fn
            if fn.urn == python_urns.KEY_WITH_NONE_DOFN:  # Beam's own, by URN, nothing pickled
                assert not fn.payload
                continue
            assert fn.urn == python_urns.PICKLED_DOFN_INFO, transform.unique_name
        elif transform.spec.urn == common_urns.composites.COMBINE_PER_KEY.urn:
            fn = beam_runner_api_pb2.CombinePayload.FromString(transform.spec.payload).combine_fn
            assert fn.urn == python_urns.PICKLED_COMBINE_FN, transform.unique_name
        else:
            continue
        found[transform.unique_name] = fn.payload
    return found


def _class_name(value: object) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def test_every_pickled_function_of_the_dataflow_graph_unpickles(dataflow_graph):
    functions = pickled_functions(dataflow_graph)
    assert any(label.endswith("ParDo(_EnrichFn)") for label in functions)
    failures = {}
    for label, payload in functions.items():
        try:
            loaded = pickler.loads(payload)
            again = pickler.loads(pickler.dumps(loaded))
            # The same class by name: Beam 2.62's default pickler (dill) carries
            # some of Beam's own DoFn classes by value, so a round trip gives an
            # equal class, not the same object.
            assert _class_name(again) == _class_name(loaded)
            if isinstance(loaded, tuple):  # a DoFn's (fn, args, kwargs, side inputs, windowing)
                assert _class_name(again[0]) == _class_name(loaded[0])
        except Exception as err:  # noqa: BLE001 - every failure is reported, by label
            failures[label] = f"{type(err).__name__}: {err}"
    assert failures == {}


def test_pickled_functions_unpickle_with_only_the_installed_package(dataflow_graph, installed, tmp_path):
    """As on a worker: a fresh interpreter whose job packages come from the
    package setup.py installs, not from this repository."""
    payloads = tmp_path / "payloads.json"
    payloads.write_text(json.dumps({label: payload.hex()
                                     for label, payload in pickled_functions(dataflow_graph).items()}))
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from apache_beam.internal import pickler
        failures = {{}}
        for label, payload in json.loads(Path({str(payloads)!r}).read_text()).items():
            try:
                pickler.loads(pickler.dumps(pickler.loads(bytes.fromhex(payload))))
            except Exception as err:
                failures[label] = f"{{type(err).__name__}}: {{err}}"
        origins = {{name: getattr(module, "__file__", None) for name, module in sys.modules.items()
                    if name.split(".")[0] in {PACKAGES!r}}}
        print(json.dumps({{"failures": failures, "origins": origins}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["failures"] == {}
    assert report["origins"], "no job module was imported: the payloads referred to none"
    outside = {name: origin for name, origin in report["origins"].items()
               if origin is not None and not Path(origin).resolve().is_relative_to(installed.resolve())}
    assert outside == {}

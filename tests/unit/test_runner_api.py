"""The streaming job as ``python -m pipelines.submit flink`` and ``... dataflow``
(``make submit-flink``, ``make submit-dataflow``) submit it: the runner flags of
``pipelines.submit``, and the job graph those flags build (not submitted),
checked through Beam's runner API.

A Dataflow ``--update`` and a Flink savepoint restore match the running job's
state to the new job by transform label, so every label must be unique, the
same on every build, survive the runner API round trip (``to_runner_api`` ->
``from_runner_api`` -> ``to_runner_api``), and not be generated from a code
location (``Map(<lambda at x.py:12>)`` changes when the code moves).

Building must not contact anything: both graphs are built with every socket to a
non-loopback address refused and Beam's file systems and GCS client refused
(:func:`offline_construction`). One contact would be Beam's, not ours:
constructing a ``beam.Pipeline`` for the DataflowRunner validates the options, and
that validation asks GCS whether ``--temp_location``'s bucket has a soft-delete
policy (``GoogleCloudOptions._warn_if_soft_delete_policy_enabled``), about 100 s of
credential retries offline. ``submit.build_graph`` passes Beam's own
``--dry_run=True``, which skips it; the guard records any such check, and the test
asserts there is none.

Flink reads Pub/Sub through Beam's cross-language (Java) PubsubIO, which an
expansion service expands while the graph is built. Beam's Java GCP IO
expansion service needs Java and its jar from Maven Central, neither of which a
test has, so :func:`expansion_service` starts a real gRPC expansion service (Beam's
Python ``ExpansionServiceServicer``) on loopback in which a stand-in,
:class:`PubsubReadStandIn`, is registered for the Java URN. Everything up to the
expansion (the request, its payload, the labels, splicing the expanded transforms
into the job) is Beam's real code path; only what the expansion contains is the
stand-in's.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import socket
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import grpc
import pytest
from apache_beam.coders.row_coder import RowCoder
from apache_beam.io.external.gcp.pubsub import ReadFromPubSub as ExternalReadFromPubSub
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp import gcsio
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, TestOptions
from apache_beam.pipeline import ExternalTransformFinder
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import (
    beam_artifact_api_pb2_grpc,
    beam_expansion_api_pb2_grpc,
    beam_runner_api_pb2,
    external_transforms_pb2,
)
from apache_beam.runners.portability import artifact_service
from apache_beam.runners.portability.expansion_service import ExpansionServiceServicer
from apache_beam.transforms.external import ExternalTransform
from apache_beam.transforms.ptransform import PTransform

from pipelines import data_streamer, submit
from pipelines.options import OptionError, validate
from pipelines.submit import SETUP_FILE, SubmitError, build_graph, runner_flags
from schemas.snapshots import RefreshingSnapshot
from schemas.streams import StreamConfigError
from tests.streams import rest_stream

PUBSUB_READ_URN = ExternalReadFromPubSub.URN  # beam:transform:org.apache.beam:pubsub_read:v1
EXTERNAL_READ_LABEL = f"ExternalTransform({PUBSUB_READ_URN})"

PROJECT = "iot-streamer-prod"
EVENTS_SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/raw-events"
USAGE_SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/raw-usage"
TEMP_LOCATION = f"gs://{PROJECT}-dataflow/tmp"
#: The deployment settings both submit commands share (docstring of pipelines/submit.py).
JOB_ARGV = [
    f"--events_subscription={EVENTS_SUBSCRIPTION}",
    f"--usage_subscription={USAGE_SUBSCRIPTION}",
    f"--reference_dir=gs://{PROJECT}-config/reference",
    f"--streams_config=gs://{PROJECT}-config/streams.json",
    "--max_streams=5000",
    "--max_streams_per_organisation=50",
    f"--output_dir=gs://{PROJECT}-data/out",
    f"--archive_location=gs://{PROJECT}-archive/raw",
]
FLINK_ARGV = ["flink", "--flink_master=flink-jobmanager:8081", *JOB_ARGV]
DATAFLOW_ARGV = ["dataflow", f"--project={PROJECT}", "--region=europe-west1", f"--temp_location={TEMP_LOCATION}",
                 *JOB_ARGV]

#: Parts of a label Beam generates from where the code is (a lambda's file and
#: line, an object's address): they change when the code moves.
CODE_LOCATION_MARKERS = ("<lambda", " at 0x", ".py:", "line ")
FIRST_PARTY = ("pipelines", "transforms", "sinks", "schemas")
#: The root labels whose subtree is the runner's own Pub/Sub read.
PUBSUB_READS = ("ReadEvents", "ReadUsage")


# --- the stand-in expansion service ---------------------------------------------------------------


def _no_messages(_: bytes) -> list[bytes]:
    return []


class PubsubReadStandIn(beam.PTransform):
    """Stands in for Beam's Java PubsubIO read (URN
    ``beam:transform:org.apache.beam:pubsub_read:v1``), which Beam's Java GCP IO
    expansion service expands; that service needs Java and its jar from Maven
    Central, which tests cannot reach. Expanded by a real gRPC expansion service
    (:func:`expansion_service`): an unbounded PCollection of message bodies
    (``bytes``), like the real read's, that never has a message."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        messages = pbegin | "Impulse" >> beam.Impulse() | "NoMessages" >> beam.FlatMap(_no_messages)
        messages.is_bounded = False
        messages.element_type = bytes
        return messages


def external_config(payload: bytes) -> dict[str, Any]:
    """The configuration row of a cross-language transform's payload
    (``ExternalConfigurationPayload``: a schema and a row encoded with it)."""
    config = external_transforms_pb2.ExternalConfigurationPayload.FromString(payload)
    return RowCoder(config.schema).decode(config.payload)._asdict()


@dataclass
class ExpansionService:
    address: str
    #: the configuration of every read the service expanded
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def expansion_service() -> Iterator[ExpansionService]:
    """A real gRPC expansion service on a free loopback port, expanding the
    Java Pub/Sub read's URN with :class:`PubsubReadStandIn`."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    # Beam's defaults for a Python expansion service, without staging a pip freeze
    # of this machine as the stand-in environment's dependency (a file read).
    options = PipelineOptions(flags=[], environment_type=python_urns.EMBEDDED_PYTHON, sdk_location="container",
                              experiments=["disable_logging_submission_environment"])
    beam_expansion_api_pb2_grpc.add_ExpansionServiceServicer_to_server(ExpansionServiceServicer(options), server)
    # The artifact service beside it, as every expansion service has: Beam asks it
    # for the expanded environment's dependencies.
    beam_artifact_api_pb2_grpc.add_ArtifactRetrievalServiceServicer_to_server(
        artifact_service.ArtifactRetrievalService(artifact_service.BeamFilesystemHandler(None).file_reader), server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0, "could not bind the expansion service to a loopback port"
    service = ExpansionService(f"127.0.0.1:{port}")

    def construct(_proto: beam_runner_api_pb2.PTransform, payload: bytes, _context: Any) -> PubsubReadStandIn:
        config = external_config(payload)
        service.requests.append(config)
        return PubsubReadStandIn(config)

    previous = PTransform._known_urns.get(PUBSUB_READ_URN)
    PTransform.register_urn(PUBSUB_READ_URN, None, construct)
    server.start()
    try:
        yield service
    finally:
        server.stop(grace=None).wait()
        if previous is None:
            PTransform._known_urns.pop(PUBSUB_READ_URN, None)
        else:
            PTransform._known_urns[PUBSUB_READ_URN] = previous


# --- building without contacting anything ---------------------------------------------------------


@dataclass
class Contacts:
    """What a graph construction tried to reach."""

    #: non-loopback addresses, file system and GCS calls: all refused
    refused: list[str] = field(default_factory=list)
    #: buckets Beam's Dataflow option validation asked about (soft-delete policy)
    soft_delete_checks: list[str] = field(default_factory=list)


def _is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def offline_construction() -> Iterator[Contacts]:
    """Refuse, and record, every socket to a non-loopback address, every Beam
    file system call and every GCS client while the block runs; answer Beam's
    soft-delete check of the Dataflow temp bucket (module docstring)."""
    contacts = Contacts()
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded(method):
        def guarded_connect(sock, address, *args):
            if not _is_loopback(address):
                contacts.refused.append(f"socket connect {address}")
                raise ConnectionRefusedError(f"graph construction must not contact {address}")
            return method(sock, address, *args)

        return guarded_connect

    def refuse(name: str):
        def refused(*args: Any, **kwargs: Any) -> Any:
            contacts.refused.append(f"{name}{args!r}")
            raise AssertionError(f"graph construction must not call {name}{args!r}")

        return refused

    beams_check = GoogleCloudOptions._warn_if_soft_delete_policy_enabled

    def soft_delete_check(options: GoogleCloudOptions, arg_name: str) -> None:
        if options.view_as(TestOptions).dry_run:
            return beams_check(options, arg_name)  # Beam returns at once under its --dry_run
        contacts.soft_delete_checks.append(getattr(options, arg_name, None))
        return None

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded(connect))
        patch.setattr(socket.socket, "connect_ex", guarded(connect_ex))
        for name in ("match", "open", "create", "exists", "delete", "rename", "copy", "mkdirs", "last_updated",
                     "checksum"):
            patch.setattr(FileSystems, name, staticmethod(refuse(f"FileSystems.{name}")))
        patch.setattr(gcsio.GcsIO, "__init__", refuse("GcsIO"))
        patch.setattr(GoogleCloudOptions, "_warn_if_soft_delete_policy_enabled", soft_delete_check)
        yield contacts


@dataclass
class Build:
    pipeline: beam.Pipeline
    proto: beam_runner_api_pb2.Pipeline
    #: the proto of ``from_runner_api(proto)``, converted back
    round_trip: beam_runner_api_pb2.Pipeline
    contacts: Contacts


def build(flags: list[str]) -> Build:
    """A fresh job graph from ``flags``, its proto and its round trip, built
    offline."""
    with offline_construction() as contacts:
        pipeline = build_graph(flags)
        proto = pipeline.to_runner_api()
        again = beam.Pipeline.from_runner_api(proto, pipeline.runner, pipeline._options)
        round_trip = again.to_runner_api()
    return Build(pipeline, proto, round_trip, contacts)


@pytest.fixture(scope="module")
def flink_flags(expansion_service) -> list[str]:
    _, flags = runner_flags([*FLINK_ARGV, f"--pubsub_expansion_service={expansion_service.address}"])
    return flags


@pytest.fixture(scope="module")
def dataflow_flags() -> list[str]:
    _, flags = runner_flags(DATAFLOW_ARGV)
    return flags


@pytest.fixture(scope="module")
def flink_builds(flink_flags) -> tuple[Build, Build]:
    return build(flink_flags), build(flink_flags)


@pytest.fixture(scope="module")
def dataflow_builds(dataflow_flags) -> tuple[Build, Build]:
    return build(dataflow_flags), build(dataflow_flags)


@pytest.fixture(scope="module", params=["flink", "dataflow"])
def builds(request) -> tuple[Build, Build]:
    return request.getfixturevalue(f"{request.param}_builds")


# --- graph helpers --------------------------------------------------------------------------------


def labels(proto: beam_runner_api_pb2.Pipeline) -> dict[str, str]:
    """Every transform's label -> its URN."""
    return {t.unique_name: t.spec.urn for t in proto.components.transforms.values()}


def by_label(proto: beam_runner_api_pb2.Pipeline, label: str) -> beam_runner_api_pb2.PTransform:
    (found,) = [t for t in proto.components.transforms.values() if t.unique_name == label]
    return found


def tree(proto: beam_runner_api_pb2.Pipeline, depth: int | None = None,
         skip_below: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The labels from the root's parts down, as paths of labels, to ``depth``
    levels (all without), not entering the parts of ``skip_below``."""
    transforms = proto.components.transforms
    (root,) = proto.root_transform_ids
    paths = []

    def walk(transform_id: str, path: tuple[str, ...]) -> None:
        for part_id in transforms[transform_id].subtransforms:
            part = (*path, transforms[part_id].unique_name)
            paths.append(part)
            if (depth is None or len(part) < depth) and part[-1] not in skip_below:
                walk(part_id, part)

    walk(root, ())
    return paths


def applied_transforms(pipeline: beam.Pipeline) -> dict[str, beam.pipeline.AppliedPTransform]:
    """Every applied transform of the Python graph by label."""
    found = {}

    def walk(node: beam.pipeline.AppliedPTransform) -> None:
        for part in node.parts:
            found[part.full_label] = part
            walk(part)

    walk(pipeline.transforms_stack[0])
    return found


def code_location_labels(build: Build) -> dict[str, str]:
    """Labels generated from a code location -> who chose them: the module of
    the composite that applied the transform without a label ("expansion
    service" for transforms only an expansion service knows)."""
    applied = applied_transforms(build.pipeline)
    found = {}
    for label in labels(build.proto):
        last = label.rsplit("/", 1)[-1]
        if not any(marker in last for marker in CODE_LOCATION_MARKERS):
            continue
        node = applied.get(label)
        if node is None:
            found[label] = "expansion service"
        elif node.parent is None or node.parent.transform is None:
            found[label] = "the pipeline root (our code)"
        else:
            found[label] = type(node.parent.transform).__module__
    return found


# --- the job graph --------------------------------------------------------------------------------


def test_building_contacts_no_service_and_no_file(flink_builds, dataflow_builds):
    for built in (*flink_builds, *dataflow_builds):
        assert built.contacts.refused == []
    # Beam's own check (module docstring) is skipped by build_graph's --dry_run=True.
    for built in (*flink_builds, *dataflow_builds):
        assert built.contacts.soft_delete_checks == []


def test_every_label_is_unique(builds):
    for built in builds:
        for proto in (built.proto, built.round_trip):
            names = Counter(t.unique_name for t in proto.components.transforms.values())
            assert {name: n for name, n in names.items() if n > 1} == {}
            assert all(names), "a transform without a label"


def test_labels_are_identical_between_builds(builds):
    first, second = builds
    assert first.pipeline is not second.pipeline
    assert sorted(labels(first.proto)) == sorted(labels(second.proto))
    assert labels(first.proto) == labels(second.proto)
    assert tree(first.proto) == tree(second.proto)


def test_runner_api_round_trip_keeps_every_label(builds):
    for built in builds:
        assert labels(built.round_trip) == labels(built.proto)
        assert tree(built.round_trip) == tree(built.proto)


def test_dataflow_submission_round_trip_keeps_every_label(dataflow_builds):
    """``Pipeline.run`` on the DataflowRunner itself round-trips the graph, with
    fake coders, when every transform pickles (``_verify_runner_api_compatible``;
    otherwise it silently skips the round trip). Portable runners (Flink) and
    graphs with external transforms are not round-tripped by Beam."""
    for built in dataflow_builds:
        assert built.pipeline._verify_runner_api_compatible()
        with offline_construction() as contacts:
            again = beam.Pipeline.from_runner_api(built.pipeline.to_runner_api(use_fake_coders=True),
                                                  built.pipeline.runner, built.pipeline._options)
            proto = again.to_runner_api()
        assert contacts.refused == []
        assert labels(proto) == labels(built.proto)


def test_no_label_of_ours_is_generated_from_a_code_location(builds):
    """Labels our code chooses are explicit. Beam's own composites label a few
    of their parts from a lambda's file and line (``fileio.WriteToFiles``'s
    ``Map(<lambda at fileio.py:NNN>)``, the ``beam.Create`` inside
    ``PeriodicImpulse``): we cannot name those, they only change with a Beam
    upgrade, which is reviewed for update compatibility anyway; they are only
    allowed from those Beam modules, so a new one shows up here."""
    for built in builds:
        found = code_location_labels(built)
        ours = {label: who for label, who in found.items() if not who.startswith("apache_beam.")}
        assert ours == {}
        beams = {who for who in found.values() if who.startswith("apache_beam.")}
        assert beams <= {"apache_beam.io.fileio", "apache_beam.transforms.core"}, found


def test_the_code_location_check_finds_lambda_labels_and_who_made_them():
    class Ours(beam.PTransform):
        def expand(self, pcoll):
            return pcoll | beam.Map(lambda x: x)

    pipeline = beam.Pipeline()
    _ = pipeline | "Numbers" >> beam.Create([1]) | beam.Map(lambda x: x) | "Ours" >> Ours()
    proto = pipeline.to_runner_api()
    found = code_location_labels(Build(pipeline, proto, proto, Contacts()))
    assert {who for label, who in found.items() if "test_runner_api.py:" in label} == {
        "the pipeline root (our code)", __name__}
    assert {who for label, who in found.items() if label.startswith("Numbers/")} == {"apache_beam.transforms.core"}


def test_flink_reads_pubsub_through_the_expansion_service(flink_builds, expansion_service):
    for built in flink_builds:
        assert ExternalTransformFinder.contains_external_transforms(built.pipeline)
        applied = applied_transforms(built.pipeline)
        proto = built.proto
        for label in PUBSUB_READS:
            assert isinstance(applied[label].transform, ExternalReadFromPubSub)
            assert isinstance(applied[f"{label}/{EXTERNAL_READ_LABEL}"].transform, ExternalTransform)
            read = by_label(proto, label)
            (external_id,) = read.subtransforms
            external = proto.components.transforms[external_id]
            assert external.unique_name == f"{label}/{EXTERNAL_READ_LABEL}"
            # The stand-in's expansion, spliced in under the read with the ids of
            # the expansion's namespace.
            expanded = {proto.components.transforms[t].unique_name: t for t in external.subtransforms}
            assert sorted(expanded) == [f"{label}/{EXTERNAL_READ_LABEL}/Impulse",
                                        f"{label}/{EXTERNAL_READ_LABEL}/NoMessages"]
            assert all(t.startswith("external_") for t in expanded.values())
            (output,) = read.outputs.values()
            assert proto.components.pcollections[output].is_bounded == beam_runner_api_pb2.IsBounded.UNBOUNDED
        assert common_urns.composites.PUBSUB_READ.urn not in labels(proto).values()
    # Beam sent the expansion service each subscription (two builds, two reads each).
    subscriptions = Counter(request["subscription"] for request in expansion_service.requests)
    assert subscriptions[EVENTS_SUBSCRIPTION] >= 2 and subscriptions[USAGE_SUBSCRIPTION] >= 2
    assert set(subscriptions) == {EVENTS_SUBSCRIPTION, USAGE_SUBSCRIPTION}
    for request in expansion_service.requests:
        assert request["topic"] is None and request["with_attributes"] is False
        assert request["timestamp_attribute"] is None


def test_dataflow_reads_pubsub_with_pythons_read(dataflow_builds):
    for built in dataflow_builds:
        assert not ExternalTransformFinder.contains_external_transforms(built.pipeline)
        applied = applied_transforms(built.pipeline)
        for label in PUBSUB_READS:
            assert isinstance(applied[label].transform, beam.io.ReadFromPubSub)
            assert labels(built.proto)[f"{label}/Read"] == common_urns.composites.PUBSUB_READ.urn
        assert not any(EXTERNAL_READ_LABEL in label for label in labels(built.proto))
        assert not any(t.startswith("external_") for t in built.proto.components.transforms)


def test_flink_and_dataflow_run_the_same_job(flink_builds, dataflow_builds):
    """One job, any runner: apart from the Pub/Sub reads the two graphs have
    the same labels, all the way down."""
    flink, dataflow = flink_builds[0].proto, dataflow_builds[0].proto
    assert tree(flink, depth=2, skip_below=PUBSUB_READS) == tree(dataflow, depth=2, skip_below=PUBSUB_READS)
    assert tree(flink, skip_below=PUBSUB_READS) == tree(dataflow, skip_below=PUBSUB_READS)
    top = [path[0] for path in tree(flink, depth=1)]
    for label in ("ReadEvents", "ReadUsage", "RefreshTicks", "Events", "Usage", "Archive[Events]",
                  "Archive[Usage]", "Deliver", "AllDeadLetters", "Write[event]", "Write[usage]",
                  "Write[dead_letters]", "Write[deliveries]"):
        assert label in top


# --- the runner flags -----------------------------------------------------------------------------


def _value(flags: list[str], name: str) -> str:
    (value,) = [flag.split("=", 1)[1] for flag in flags if flag.startswith(f"--{name}=")]
    return value


def test_flink_flags():
    args, flags = runner_flags(FLINK_ARGV)
    assert args.runner == "flink"
    for flag in ("--runner=FlinkRunner", "--flink_master=flink-jobmanager:8081", "--flink_submit_uber_jar",
                 "--streaming", "--environment_type=EXTERNAL", "--environment_config=localhost:50000",
                 "--checkpointing_interval=60000", "--job_name=datastreamer", "--detach",
                 "--pubsub_expansion_service=auto", *JOB_ARGV):
        assert flag in flags
    setup_file = Path(_value(flags, "setup_file"))
    assert setup_file.is_absolute() and setup_file.name == "setup.py" and setup_file.is_file()
    assert str(setup_file) == SETUP_FILE
    assert not any(flag.startswith(("--job_endpoint", "--enable_streaming_engine", "--update", "--project"))
                   for flag in flags)
    assert len(flags) == len(set(flags))


def test_flink_job_endpoint_submits_with_the_portable_runner():
    _, flags = runner_flags(["flink", "--job_endpoint=flink-job-server:8099", *JOB_ARGV])
    assert "--runner=PortableRunner" in flags and "--job_endpoint=flink-job-server:8099" in flags
    assert not any(flag.startswith(("--runner=FlinkRunner", "--flink_master")) for flag in flags)


def test_flink_environment_and_checkpoint_settings():
    _, flags = runner_flags([*FLINK_ARGV, "--environment_type=DOCKER", "--parallelism=4",
                             "--checkpointing_interval_ms=30000", "--pubsub_expansion_service=10.0.0.5:8097"])
    assert "--environment_type=DOCKER" in flags
    assert not any(flag.startswith("--environment_config") for flag in flags)  # Beam's SDK image
    assert "--parallelism=4" in flags and "--checkpointing_interval=30000" in flags
    assert "--pubsub_expansion_service=10.0.0.5:8097" in flags
    _, flags = runner_flags([*FLINK_ARGV, "--environment_config=sdk-pool:50000"])
    assert _value(flags, "environment_config") == "sdk-pool:50000"


def test_dataflow_flags():
    args, flags = runner_flags(DATAFLOW_ARGV)
    assert args.runner == "dataflow"
    for flag in ("--runner=DataflowRunner", f"--project={PROJECT}", "--region=europe-west1",
                 f"--temp_location={TEMP_LOCATION}", "--enable_streaming_engine", "--streaming",
                 "--job_name=datastreamer", "--detach", *JOB_ARGV):
        assert flag in flags
    assert _value(flags, "setup_file") == SETUP_FILE
    assert "--update" not in flags
    assert not any(flag.startswith(("--flink_master", "--environment_type", "--checkpointing_interval",
                                    "--pubsub_expansion_service")) for flag in flags)
    assert len(flags) == len(set(flags))


def test_dataflow_update_and_worker_settings_only_when_asked():
    _, flags = runner_flags([*DATAFLOW_ARGV, "--update", "--job_name=datastreamer-eu",
                             "--service_account_email=streamer@iot-streamer-prod.iam.gserviceaccount.com",
                             "--max_num_workers=20"])
    assert "--update" in flags and "--job_name=datastreamer-eu" in flags and "--max_num_workers=20" in flags
    assert "--service_account_email=streamer@iot-streamer-prod.iam.gserviceaccount.com" in flags


def test_workers_load_the_streams_within_the_limits_of_the_command_line(builds, tmp_path):
    """--max_streams and --max_streams_per_organisation travel with the graph to
    the loads the workers make at every refresh, not only to the submitting
    machine's: the graph's own loader (every step reading the stream
    configuration carries it) refuses a 51st stream of an organisation."""
    loaders = {
        label: arg._load for label, applied in applied_transforms(builds[0].pipeline).items()
        for arg in getattr(applied.transform, "args", None) or ()
        if isinstance(arg, RefreshingSnapshot) and arg.what == "streams"
    }
    assert any("Route" in label for label in loaders) and any("Recover" in label for label in loaders), loaders
    path = tmp_path / "streams.json"
    path.write_text(json.dumps([rest_stream(f"s{n}", "https://hooks.example.com/iot") for n in range(51)]))
    load = next(iter(loaders.values()))
    with pytest.raises(StreamConfigError) as caught:
        functools.partial(load.func, str(path), *load.args[1:])()  # the graph's loader on another file
    assert str(caught.value) == (f"{path}: stream 's50': organisation_id 80025 has more than the 50 streams an "
                                 "organisation may have (--max_streams_per_organisation)")


def test_other_flags_go_to_the_job_as_they_are():
    _, flags = runner_flags([*DATAFLOW_ARGV, "--max_buffering_seconds=10", "--worker_machine_type=n2-standard-4"])
    assert flags[-2:] == ["--max_buffering_seconds=10", "--worker_machine_type=n2-standard-4"]


@pytest.mark.parametrize(("argv", "message"), [
    pytest.param([*FLINK_ARGV, "--output_dir=out"],
                 "--output_dir: 'out' is a local path; every worker must reach it", id="local-output-dir"),
    pytest.param([*DATAFLOW_ARGV, "--park_location=/var/parked"],
                 "--park_location: '/var/parked' is a local path", id="local-park-location"),
    pytest.param(["flink", "--flink_master=flink-jobmanager:8081", *JOB_ARGV[2:]],
                 "--events_subscription or --usage_subscription: a streaming job reads at least one",
                 id="no-subscription"),
    pytest.param([*DATAFLOW_ARGV, "--job_name=Data_Streamer"],
                 "--job_name: Dataflow job names are lower-case letters, digits and '-', starting with a letter, "
                 "got 'Data_Streamer'", id="bad-dataflow-job-name"),
    pytest.param([*DATAFLOW_ARGV, "--temp_location=s3://bucket/tmp"],
                 "--temp_location: Dataflow workers need a gs:// path, got 's3://bucket/tmp'", id="non-gs-temp"),
    pytest.param([*DATAFLOW_ARGV, "--output_dir=s3://bucket/out"],
                 "--output_dir: Dataflow workers need a gs:// path, got 's3://bucket/out'", id="non-gs-output"),
    pytest.param([*FLINK_ARGV, "--checkpointing_interval_ms=0"],
                 "--checkpointing_interval_ms must be positive", id="no-checkpoints"),
    pytest.param([a for a in FLINK_ARGV if not a.startswith("--streams_config")] + [
        "--streams_db=sqlite:////var/portal.db"], "--streams_db: every worker must reach the stream store",
        id="sqlite-store"),
])
def test_unusable_settings_are_refused_naming_the_flag(argv, message, capsys):
    with pytest.raises(SubmitError) as raised:
        runner_flags(argv)
    assert message in str(raised.value)
    # The command line says the same and exits 2, before anything is built.
    assert submit.main(argv) == 2
    assert capsys.readouterr().err == f"error: {raised.value}\n"


def test_the_streams_may_come_from_the_portals_store_instead_of_a_file(capsys):
    argv = [a for a in DATAFLOW_ARGV if not a.startswith("--streams_config")]
    _, flags = runner_flags([*argv, "--streams_db=postgresql+psycopg://portal@db.internal/portal"])
    assert "--streams_db=postgresql+psycopg://portal@db.internal/portal" in flags
    assert not [flag for flag in flags if flag.startswith("--streams_config")]
    with pytest.raises(SystemExit):
        submit.main([*DATAFLOW_ARGV, "--streams_db=postgresql+psycopg://portal@db.internal/portal"])
    assert "not allowed with argument" in capsys.readouterr().err, "one or the other"


def test_dataflow_streams_config_may_be_on_any_shared_file_system():
    _, flags = runner_flags([*DATAFLOW_ARGV, "--streams_config=s3://config-bucket/streams.json"])
    assert "--streams_config=s3://config-bucket/streams.json" in flags


@pytest.mark.parametrize("argv", [
    pytest.param(["flink", "--flink_master=flink-jobmanager:8081", *JOB_ARGV[:-2]], id="no-output-dir"),
    pytest.param(["flink", *JOB_ARGV], id="no-flink-target"),
    pytest.param(["dataflow", "--region=europe-west1", f"--temp_location={TEMP_LOCATION}", *JOB_ARGV],
                 id="no-project"),
    pytest.param([*JOB_ARGV], id="no-runner"),
])
def test_command_line_without_a_required_flag_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        submit.main(argv)
    assert exited.value.code == 2
    assert "required" in capsys.readouterr().err


# --- --dry_run, end to end ------------------------------------------------------------------------


@pytest.fixture
def no_submission(monkeypatch) -> None:
    def submitted(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("--dry_run submitted the job")

    monkeypatch.setattr(data_streamer, "main", submitted)
    monkeypatch.setattr(beam.Pipeline, "run", submitted)


@pytest.mark.parametrize("runner", ["flink", "dataflow"])
def test_dry_run_prints_the_flags_and_builds_without_submitting(runner, request, no_submission, capsys):
    if runner == "flink":
        address = request.getfixturevalue("expansion_service").address
        argv = [*FLINK_ARGV, f"--pubsub_expansion_service={address}", "--dry_run"]
    else:
        argv = [*DATAFLOW_ARGV, "--dry_run"]
    _, flags = runner_flags(argv)
    expected = len(request.getfixturevalue(f"{runner}_builds")[0].proto.components.transforms)

    with offline_construction() as contacts:
        code = submit.main(argv)

    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("python -m pipelines.data_streamer \\\n")
    for flag in flags:
        assert f"    {flag}" in out
    assert "--dry_run" not in out  # the submit command's own flag, not the job's
    assert out.endswith(f"dry run: built the graph, {expected} transforms; not submitted\n")
    assert contacts.refused == []


@pytest.mark.parametrize("retain_unknown_options", [False, True], ids=["job_server", "uber_jar"])
def test_the_pubsub_endpoint_reaches_java_under_the_name_it_reads(retain_unknown_options):
    """``--pubsub_endpoint`` is sent to the runner as ``pubsub_root_url``, which
    Java camel-cases to its ``PubsubOptions.pubsubRootUrl``; Beam's own Python
    ``--pubsub_root_url`` is sent as ``pubsubRootUrl`` (read as ``pubsubrooturl``:
    ignored), so a regional endpoint or an emulator would silently not be used.
    Both ways the FlinkRunner sends options (a job server; an uber jar, which
    keeps unknown options) carry it."""
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    options = data_streamer._parse_args([*JOB_ARGV, "--streaming", "--runner=FlinkRunner",
                                         "--pubsub_expansion_service=auto",
                                         "--pubsub_endpoint=https://europe-west3-pubsub.googleapis.com"])
    validate(options)
    encoded = JobServiceHandle.encode_pipeline_options(
        options.get_all_options(retain_unknown_options=retain_unknown_options))
    sent = {key: value for key, value in encoded.items() if "pubsub" in key.lower() and "root" in key.lower()}
    assert sent == {"beam:option:pubsub_root_url:v1": "https://europe-west3-pubsub.googleapis.com"}


@pytest.mark.parametrize(("extra", "message"), [
    (["--pubsub_endpoint=https://europe-west3-pubsub.googleapis.com"], "only the cross-language read"),
    (["--pubsub_expansion_service=auto", "--pubsub_endpoint=europe-west3-pubsub.googleapis.com"], "expected https"),
    (["--pubsub_expansion_service=auto", "--pubsub_endpoint=https://u:hunter2@pubsub.example/"], "credentials"),
    (["--pubsub_expansion_service=auto", "--pubsub_endpoint=https://pubsub.example/v1"], "without a path"),
])
def test_an_unusable_pubsub_endpoint_is_refused_without_echoing_it(extra, message):
    options = data_streamer._parse_args([*JOB_ARGV, "--streaming", "--runner=DirectRunner",
                                         f"--refresh_subscription=projects/{PROJECT}/subscriptions/refresh", *extra])
    with pytest.raises(OptionError, match=message) as raised:
        validate(options)
    assert "hunter2" not in str(raised.value) and str(raised.value).startswith("--pubsub_endpoint")


def test_auto_expands_the_pubsub_read_as_a_primitive_read_flink_runs_natively():
    """``--pubsub_expansion_service=auto`` starts Beam's expansion service with
    ``use_deprecated_read``: as a splittable DoFn the read held Flink's watermark
    at its minimum, and no window of the job ever closed."""
    service = data_streamer.resolve_expansion_service("auto")
    assert "--experiments=use_deprecated_read" in service._append_args
    assert data_streamer.resolve_expansion_service("10.0.0.5:8097") == "10.0.0.5:8097"

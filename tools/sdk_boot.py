"""The Beam SDK container's boot contract for the local worker pool's workers.

A TaskManager's SDK workers in production come from Beam's SDK container (the
``apache/beam_python3.11_sdk --worker_pool`` sidecar). Its boot program asks the
runner's provision service for the job's pipeline options and starts
``sdk_worker_main`` with them. Beam's worker pool run without a container
executable starts a bare ``SdkHarness`` instead, with no pipeline options at all.
Such a worker's ``FileSystems`` has no options, so every ``s3://`` location of the
job failed on it ("Must provide one of client or options"). It also has no
logging endpoint, and its output goes to a pipe the pool never reads.

:class:`tools.portable.WorkerPool` therefore gives the pool this module as its
``--container_executable``, which does what the container's boot does for a
worker whose code is already installed: it reads the provision info, puts the
pipeline options, endpoints and runner capabilities where ``sdk_worker_main``
reads them (the environment), and replaces itself with ``sdk_worker_main``.
Staged artifacts are not installed: the pool's virtual environment has the job.

Written here because Beam ships the contract only as the Go boot program of its
container image (``sdks/python/container/boot.go``), which also pip-installs the
staged packages into the running environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc, endpoints_pb2
from google.protobuf import json_format, text_format

#: Provisioning is the runner's first answer to a new worker; it comes at once.
PROVISION_TIMEOUT_SECONDS = 60.0


def _descriptor(url: str) -> str:
    return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))


def worker_environment(args: argparse.Namespace, info: beam_provision_api_pb2.ProvisionInfo,
                       base: dict[str, str]) -> dict[str, str]:
    """The environment ``sdk_worker_main`` starts from (its names are Beam's)."""
    env = dict(base)
    env.update({
        "WORKER_ID": args.id,
        "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),
        "CONTROL_API_SERVICE_DESCRIPTOR": _descriptor(info.control_endpoint.url or args.control_endpoint),
        "LOGGING_API_SERVICE_DESCRIPTOR": _descriptor(info.logging_endpoint.url or args.logging_endpoint),
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    })
    if args.semi_persistent_directory:
        env["SEMI_PERSISTENT_DIRECTORY"] = args.semi_persistent_directory
    return env


def provision_info(endpoint: str, worker_id: str) -> beam_provision_api_pb2.ProvisionInfo:
    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        response = stub.GetProvisionInfo(beam_provision_api_pb2.GetProvisionInfoRequest(),
                                         metadata=[("worker_id", worker_id)], timeout=PROVISION_TIMEOUT_SECONDS)
    return response.info


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.sdk_boot")
    for flag in ("--id", "--provision_endpoint", "--control_endpoint", "--logging_endpoint"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--artifact_endpoint", default=None, help="Not used: the job's code is installed.")
    parser.add_argument("--semi_persistent_directory", default=None)
    args, _ = parser.parse_known_args(argv)
    env = worker_environment(args, provision_info(args.provision_endpoint, args.id), dict(os.environ))
    os.execve(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env)


if __name__ == "__main__":
    main()

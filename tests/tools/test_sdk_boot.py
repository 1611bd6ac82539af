"""``tools/sdk_boot.py``: a worker of the local pool starts as in Beam's SDK
container, with the job's pipeline options, where ``sdk_worker_main`` reads them."""

from __future__ import annotations

import argparse

from apache_beam.io.aws.s3io import S3IO
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_provision_api_pb2, endpoints_pb2
from apache_beam.runners.worker import sdk_worker_main
from google.protobuf import struct_pb2, text_format

from tools import sdk_boot
from tools.portable import boot_executable


def _info() -> beam_provision_api_pb2.ProvisionInfo:
    options = struct_pb2.Struct()
    options.update({"beam:option:s3_endpoint_url:v1": "http://127.0.0.1:5000",
                    "beam:option:s3_access_key_id:v1": "test", "beam:option:s3_secret_access_key:v1": "test",
                    "beam:option:s3_region_name:v1": "eu-central-1", "beam:option:job_name:v1": "datastreamer"})
    return beam_provision_api_pb2.ProvisionInfo(
        pipeline_options=options, runner_capabilities=["beam:protocol:control_response_elements_embedding:v1"],
        control_endpoint=endpoints_pb2.ApiServiceDescriptor(url="localhost:1111"))


def test_the_worker_environment_carries_the_jobs_options_and_endpoints():
    args = argparse.Namespace(id="worker_7", control_endpoint="localhost:9", logging_endpoint="localhost:2222",
                              semi_persistent_directory=None)
    env = sdk_boot.worker_environment(args, _info(), {"PATH": "/bin"})
    assert env["PATH"] == "/bin" and env["WORKER_ID"] == "worker_7"
    # The provision info's endpoint wins over the command line's, as in Beam's boot.
    control = text_format.Parse(env["CONTROL_API_SERVICE_DESCRIPTOR"], endpoints_pb2.ApiServiceDescriptor())
    logging = text_format.Parse(env["LOGGING_API_SERVICE_DESCRIPTOR"], endpoints_pb2.ApiServiceDescriptor())
    assert (control.url, logging.url) == ("localhost:1111", "localhost:2222")
    assert env["RUNNER_CAPABILITIES"] == "beam:protocol:control_response_elements_embedding:v1"
    # What sdk_worker_main makes of it: the options its FileSystems get, so an
    # s3:// location opens on the worker (without them: "Must provide one of
    # client or options").
    options = PipelineOptions.from_dictionary(sdk_worker_main._load_pipeline_options(env["PIPELINE_OPTIONS"]))
    assert options.get_all_options()["s3_endpoint_url"] == "http://127.0.0.1:5000"
    FileSystems.set_options(options)
    try:
        filesystem = FileSystems.get_filesystem("s3://bucket/x")
        assert isinstance(S3IO(options=filesystem._options), S3IO)
    finally:
        FileSystems.set_options(None)


def test_the_pool_gets_an_executable_that_boots_through_this_module():
    boot = boot_executable()
    text = boot.read_text()
    assert boot.stat().st_mode & 0o111 and text.startswith("#!/bin/sh\n") and "-m tools.sdk_boot" in text
    assert boot_executable() == boot, "one per process"

"""Packaging of the data streamer.

Workers on Flink and Dataflow install the job with ``--setup_file ./setup.py``, so
every package the pipeline imports is listed here. Version ranges are the ones the
test suite ran against; ``constraints.txt`` pins the exact versions used by
``make`` so that a fresh clone installs what CI tested.
"""

from setuptools import find_packages, setup

RUNTIME = [
    "apache-beam[gcp]>=2.70,<2.80",
    "pyarrow>=18,<26",
    "fastavro>=1.9,<2",
    "google-cloud-pubsub>=2.20,<3",
    "boto3>=1.34,<2",
    "requests>=2.31,<3",
    "tenacity>=8,<10",
    "orjson>=3.10,<4",
    "PyYAML>=6,<7",
]

TEST = [
    "pytest>=8,<10",
    "ruff>=0.6,<1",
    "moto[server]>=5,<6",
    "datadog-api-client>=2.30,<3",
]

setup(
    name="iot-data-streamer",
    version="0.1.0",
    description="Apache Beam job streaming IoT SIM events and usage records to customers' data streams",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*",
                                    "sinks", "sinks.*", "schemas", "schemas.*"]),
    package_data={"schemas": ["avro/*.avsc", "avro/reference/*.avsc"]},
    install_requires=RUNTIME,
    extras_require={"test": TEST},
)

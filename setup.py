"""Packaging of the data streamer: what Flink and Dataflow workers install.

Workers install the job with ``--setup_file ./setup.py`` (``pipelines/submit.py``),
so this packages the four job packages and the third-party packages they import,
nothing else: the development tools (``tools/``: local launchers and destinations,
the sample fleet, the bench, the DirectRunner workarounds) and the test and lint
dependencies (``requirements-dev.txt``) stay on development machines
(``tests/e2e/test_packaging.py`` checks both). Version ranges are the ones the
test suite ran against; ``constraints.txt`` pins the exact versions ``make``
installs, so a fresh clone installs what CI tested.
"""

from setuptools import find_packages, setup

RUNTIME = [
    # Exactly the Beam of the Java side (tools/flink/pom.xml): Flink's job server and
    # the SDK workers must be one Beam version, and 2.62.0 is the newest whose Flink
    # runner jars Maven Central serves here (docs/flink.md).
    "apache-beam[gcp]==2.62.0",
    "pyarrow>=16,<26",
    "fastavro>=1.9,<2",
    "google-cloud-pubsub>=2.20,<3",
    "boto3>=1.34,<2",
    "requests>=2.31,<3",
    # sinks/http.py and sinks/aws.py pin connections to checked addresses with urllib3's pools.
    "urllib3>=2,<3",
    "tenacity>=8,<10",
    "orjson>=3.10,<4",
    "PyYAML>=6,<7",
    # --streams_db: the portal's stream store (schemas/stream_store.py), SQLite or PostgreSQL.
    "SQLAlchemy>=2.0,<3",
    "psycopg[binary]>=3.1,<4",
    # Sealed credentials of streams made in the portal (schemas/sealing.py).
    "cryptography>=42,<51",
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
)

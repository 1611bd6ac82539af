"""The Pub/Sub emulator's address as Java's PubsubIO reads it, for the
cross-language read on Flink.

Java's ``PubsubOptions.pubsubRootUrl`` is where PubsubIO sends its requests
(``https://pubsub.googleapis.com`` unless set). A Python job hands its options to
the Java side as ``beam:option:<dest>:v1`` and Java turns ``<dest>`` from
snake_case into its own camelCase name. Beam's own Python flag,
``--pubsub_root_url`` (``TestDataflowOptions``), has the destination
``pubsubRootUrl``, which arrives as ``pubsubrooturl``: Java ignores it, and the
read silently polls Google's Pub/Sub instead of the emulator (seen with Beam
2.62.0; no upstream issue found). The flag here has the destination Java expects.

Production reads Google's Pub/Sub and needs none of this, so it is not a job
option: the local Flink harnesses import this module, which registers the flag
for every ``PipelineOptions`` of their process, and pass it with the emulator's
URL.
"""

from __future__ import annotations

import argparse

import apache_beam
from apache_beam.options.pipeline_options import PipelineOptions

#: The Beam versions whose Java side was seen to read ``pubsub_root_url`` this way.
TESTED_BEAM_VERSIONS = frozenset({"2.62.0"})
FLAG = "--java_pubsub_root_url"


class UntestedBeamVersionError(RuntimeError):
    """The flag's translation was not checked with this Beam version."""


class JavaPubsubRootUrlOptions(PipelineOptions):
    """``--java_pubsub_root_url``: Java PubsubIO's ``pubsubRootUrl`` (module docstring)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(FLAG, dest="pubsub_root_url", default=None,
                            help="Pub/Sub root URL of the Java PubsubIO of a cross-language read "
                                 "(the emulator's http://host:port).")


def root_url_flag(emulator_url: str) -> str:
    """The flag for a job whose cross-language Pub/Sub reads go to ``emulator_url``;
    refuses a Beam version the translation was not checked with."""
    if apache_beam.__version__ not in TESTED_BEAM_VERSIONS:
        raise UntestedBeamVersionError(
            f"{FLAG} was checked with Beam {sorted(TESTED_BEAM_VERSIONS)}, not {apache_beam.__version__}: "
            "check that the Java side of the Pub/Sub read reaches the emulator, then add the version")
    return f"{FLAG}={emulator_url}"

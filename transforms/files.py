"""Reading raw records from files and writing documents and dead letters.

Raw files come in three formats, chosen by extension unless told otherwise:
JSONL (``.jsonl``, ``.ndjson``, ``.json``: one record per line, read as bytes so
that invalid UTF-8 reaches the parser and becomes a dead letter instead of failing
the read), Avro (``.avro``, read with fastavro) and Parquet (``.parquet``, read
with pyarrow). All three yield elements the parser accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.coders import BytesCoder
from apache_beam.io import fileio
from apache_beam.io.avroio import ReadFromAvro
from apache_beam.io.parquetio import ReadFromParquet
from apache_beam.io.textio import ReadFromText, WriteToText
from apache_beam.options.value_provider import StaticValueProvider

from schemas.records import dead_letter_json
from transforms.windows import GatherWindows

FORMATS = ("jsonl", "avro", "parquet")
_BY_EXTENSION = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".avro": "avro", ".parquet": "parquet"}


def detect_format(pattern: str) -> str:
    """The raw file format a path or glob names, from its extension."""
    for extension, fmt in _BY_EXTENSION.items():
        if pattern.endswith(extension):
            return fmt
    raise ValueError(
        f"cannot tell the format of {pattern!r} from its extension "
        f"({', '.join(_BY_EXTENSION)}); pass --input_format"
    )


class ReadRawRecords(beam.PTransform):
    """Raw records of one file pattern: bytes per JSONL line, dicts per Avro or
    Parquet row."""

    def __init__(self, pattern: str, fmt: str | None = None) -> None:
        super().__init__()
        self._pattern = pattern
        self._format = fmt or detect_format(pattern)
        if self._format not in FORMATS:
            raise ValueError(f"unknown input format {self._format!r}; one of {', '.join(FORMATS)}")

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        if self._format == "jsonl":
            return pbegin | "ReadJsonl" >> ReadFromText(self._pattern, coder=BytesCoder())
        if self._format == "avro":
            return pbegin | "ReadAvro" >> ReadFromAvro(self._pattern)
        return pbegin | "ReadParquet" >> ReadFromParquet(self._pattern)


class WriteJsonLines(beam.PTransform):
    """Elements as JSON lines under ``<prefix>-SSSSS-of-NNNNN.jsonl``; ``encode``
    turns one element into its JSON bytes (documents by default)."""

    def __init__(self, prefix: str, encode: Callable[[Any], bytes] = orjson.dumps) -> None:
        super().__init__()
        self._prefix = prefix
        self._encode = encode

    def expand(self, elements: beam.PCollection) -> beam.pvalue.PDone:
        return (
            elements
            | "ToJson" >> beam.Map(self._encode)
            | "Write" >> WriteToText(self._prefix, file_name_suffix=".jsonl")
        )


def write_dead_letters(prefix: str) -> WriteJsonLines:
    """Dead letters as JSON lines, their payload in base64."""
    return WriteJsonLines(prefix, encode=dead_letter_json)


class WriteWindowedJsonLines(beam.PTransform):
    """A streaming run's output: elements as JSON lines, one file per window of
    ``window_seconds`` of processing time (:class:`transforms.windows.GatherWindows`),
    named ``<dir>/<name>-<window start>-<window end>-<shard>-of-<shards>.jsonl`` by
    Beam's ``fileio.WriteToFiles``. Every window fires once, so no file is ever
    written twice."""

    def __init__(self, prefix: str, window_seconds: int, encode: Callable[[Any], bytes] = orjson.dumps) -> None:
        super().__init__()
        self._directory, _, self._name = prefix.rstrip("/").rpartition("/")
        self._window_seconds = window_seconds
        self._encode = encode

    def expand(self, elements: beam.PCollection) -> beam.PCollection:
        return (
            elements
            | "Gather" >> GatherWindows(self._window_seconds)
            | "ToJson" >> beam.Map(lambda element, encode=self._encode: encode(element).decode("utf-8"))
            | "Write" >> fileio.WriteToFiles(
                path=self._directory,
                file_naming=fileio.default_file_naming(prefix=self._name, suffix=".jsonl"),
                shards=1,
                temp_directory=StaticValueProvider(str, f"{self._directory}/_temp"),
            )
        )

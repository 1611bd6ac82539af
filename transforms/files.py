"""Reading raw records from files and writing documents and dead letters.

Raw files come in three formats, chosen by extension unless told otherwise:
JSONL (``.jsonl``, ``.ndjson``, ``.json``: one record per line, read as bytes so
that invalid UTF-8 reaches the parser and becomes a dead letter instead of failing
the read), Avro (``.avro``, read with fastavro) and Parquet (``.parquet``, read
with pyarrow). All three yield elements the parser accepts.

A damaged file must not fail the run: the design brief's "bad input gets a clear
reason, never a crash". Beam's ``ReadFromAvro`` and ``ReadFromParquet`` raise out
of the read on the first undecodable byte, failing the whole job with a traceback
and no summary, so Avro and Parquet files are read here, a whole file per element
(``fileio.MatchFiles`` + ``ReadMatches``), by functions that turn every decoding
failure into an :class:`~schemas.records.Unreadable` element:

- Avro, block by block (``fastavro.block_reader``; every block ends in the file's
  sync marker, so a damaged block does not take the next ones with it): a record
  that fails to decode ends its block (``not_utf8`` for invalid UTF-8 in a string,
  else ``damaged_file``), naming the file, the record number and the block's byte
  offset; the records before it are kept. A header or block structure that cannot
  be read ends the file the same way.
- Parquet, row group by row group: an unreadable footer ends the file, an
  unreadable row group is one ``damaged_file`` naming its rows, and the other row
  groups are still read.

The parser dead-letters each ``Unreadable`` with its reason, so the run ends with
its summary and counts that reconcile. Its payload is at most
:data:`MAX_UNREADABLE_BYTES` of the damaged bytes. A file per element gives up
Beam's splitting of one large Avro file across workers; inputs come as many
files, and a file per worker is the parallelism the job uses for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import IO, Any

import apache_beam as beam
import fastavro
import orjson
import pyarrow.parquet as pq
from apache_beam.coders import BytesCoder
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.textio import ReadFromText, WriteToText
from apache_beam.options.value_provider import StaticValueProvider

from schemas.records import Unreadable, dead_letter_json, quote
from transforms.windows import GatherWindows

_LOG = logging.getLogger(__name__)

#: The most bytes of a damaged part of a file a dead letter carries (the rest of a
#: damaged multi-gigabyte file would not fit a dead letter); the detail gives the
#: offset, so the whole part can be cut from the file itself.
MAX_UNREADABLE_BYTES = 64 * 1024
#: How much of a decoder's error message a detail keeps.
_ERROR_LIMIT = 160

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


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {quote(str(err), _ERROR_LIMIT)}"


def _bytes_at(handle: IO[bytes], offset: int) -> bytes:
    """Up to :data:`MAX_UNREADABLE_BYTES` of the file from ``offset``; empty if the
    file cannot even be re-read there."""
    try:
        handle.seek(offset)
        return handle.read(MAX_UNREADABLE_BYTES)
    except Exception:  # noqa: BLE001 - the payload is best effort; the detail names the offset
        return b""


def read_avro(path: str, handle: IO[bytes]) -> Iterator[dict[str, Any] | Unreadable]:
    """Rows of one Avro file, and an :class:`Unreadable` for each damaged part
    (module docstring). Never raises for what the file holds."""
    try:
        blocks = fastavro.block_reader(handle)
        next_offset = handle.tell()
    except Exception as err:  # noqa: BLE001 - any decoder failure on untrusted bytes is damage
        detail = f"{path}: not a readable Avro file (header at byte 0): {_error_text(err)}"
        yield Unreadable("damaged_file", detail, _bytes_at(handle, 0))
        return
    number = 0  # records read so far
    while True:
        try:
            block = next(blocks)
        except StopIteration:
            return
        except Exception as err:  # noqa: BLE001
            detail = (f"{path}: damaged Avro file: records {number + 1} onwards unreadable, from the block at "
                      f"byte offset {next_offset:,}: {_error_text(err)}")
            yield Unreadable("damaged_file", detail, _bytes_at(handle, next_offset))
            return
        next_offset = block.offset + block.size
        decoded = 0  # records of this block decoded so far
        try:
            for record in block:
                decoded += 1
                number += 1
                yield record
        except Exception as err:  # noqa: BLE001
            reason = "not_utf8" if isinstance(err, UnicodeDecodeError) else "damaged_file"
            rest = max(block.num_records - decoded, 1)  # the failing record and the ones after it
            detail = (f"{path}: damaged Avro record {number + 1:,} (and the {rest - 1:,} after it in its block, "
                      f"which starts at byte offset {block.offset:,}): {_error_text(err)}")
            number += rest
            resume = handle.tell()
            yield Unreadable(reason, detail, _bytes_at(handle, block.offset))
            handle.seek(resume)


def read_parquet(path: str, handle: IO[bytes]) -> Iterator[dict[str, Any] | Unreadable]:
    """Rows of one Parquet file, and an :class:`Unreadable` for an unreadable
    footer (the whole file) or each unreadable row group (module docstring)."""
    try:
        parquet = pq.ParquetFile(handle)
        groups = parquet.metadata.num_row_groups
    except Exception as err:  # noqa: BLE001 - any decoder failure on untrusted bytes is damage
        detail = f"{path}: not a readable Parquet file (footer or header): {_error_text(err)}"
        yield Unreadable("damaged_file", detail, _bytes_at(handle, 0))
        return
    first_row = 1
    for group in range(groups):
        try:
            size = parquet.metadata.row_group(group).num_rows
            rows = parquet.read_row_group(group).to_pylist()
        except Exception as err:  # noqa: BLE001
            offset = _row_group_offset(parquet, group)
            detail = (f"{path}: damaged Parquet row group {group + 1} of {groups} (rows {first_row:,} onwards, "
                      f"byte offset {offset:,}): {_error_text(err)}")
            yield Unreadable("damaged_file", detail, _bytes_at(handle, offset))
            size = _row_group_rows(parquet, group)
        else:
            yield from rows
        first_row += size


def _row_group_offset(parquet: pq.ParquetFile, group: int) -> int:
    try:
        column = parquet.metadata.row_group(group).column(0)
        return int(column.dictionary_page_offset or column.data_page_offset)
    except Exception:  # noqa: BLE001 - the footer itself may be what is damaged
        return 0


def _row_group_rows(parquet: pq.ParquetFile, group: int) -> int:
    try:
        return int(parquet.metadata.row_group(group).num_rows)
    except Exception:  # noqa: BLE001
        return 0


_READERS = {"avro": read_avro, "parquet": read_parquet}


class _ReadFileFn(beam.DoFn):
    """One matched file -> its rows and :class:`Unreadable` parts. A file that
    cannot be opened at all is one ``unreadable_file``."""

    def __init__(self, fmt: str) -> None:
        self._format = fmt

    def process(self, readable: fileio.ReadableFile) -> Iterator[dict[str, Any] | Unreadable]:
        path = readable.metadata.path
        try:
            handle = readable.open(compression_type=CompressionTypes.UNCOMPRESSED)
        except Exception as err:  # noqa: BLE001 - an unreadable file is a dead letter, not a crash
            _LOG.warning("cannot open %s: %s", path, err)
            yield Unreadable("unreadable_file", f"{path}: cannot open: {_error_text(err)}", b"")
            return
        with handle:
            yield from _READERS[self._format](path, handle)


class ReadRawRecords(beam.PTransform):
    """Raw records of one file pattern: bytes per JSONL line, dicts per Avro or
    Parquet row, and :class:`~schemas.records.Unreadable` for the damaged parts of
    Avro and Parquet files (module docstring)."""

    def __init__(self, pattern: str, fmt: str | None = None) -> None:
        super().__init__()
        self._pattern = pattern
        self._format = fmt or detect_format(pattern)
        if self._format not in FORMATS:
            raise ValueError(f"unknown input format {self._format!r}; one of {', '.join(FORMATS)}")

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        if self._format == "jsonl":
            return pbegin | "ReadJsonl" >> ReadFromText(self._pattern, coder=BytesCoder())
        label = "ReadAvro" if self._format == "avro" else "ReadParquet"
        return (
            pbegin
            | f"{label}[Match]" >> fileio.MatchFiles(self._pattern)
            | f"{label}[Open]" >> fileio.ReadMatches()
            | label >> beam.ParDo(_ReadFileFn(self._format))
        )


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

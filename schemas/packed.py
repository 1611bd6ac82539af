"""The packed form of a chunk: how routed chunks cross a shuffle as plain bytes.

The routing step (``transforms/routing.py``) packs the pairs of a chunk, the
de-duplication and the sinks' batching (``sinks/batching.py``) unpack them: both
layers speak this format, so it lives with the other records both share. Why JSON
bytes and not Beam's own coder: ``transforms/chunks.py``'s module docstring.
"""

from __future__ import annotations

from typing import Any

import orjson


def pack_pairs(pairs: list[tuple[Any, Any]]) -> bytes:
    """A list of pairs as bytes to shuffle (module docstring)."""
    return orjson.dumps(pairs)


def unpack_pairs(packed: bytes) -> list[tuple[Any, Any]]:
    """The pairs :func:`pack_pairs` packed, as tuples again."""
    return [tuple(pair) for pair in orjson.loads(packed)]

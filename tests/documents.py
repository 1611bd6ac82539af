"""Customer documents for sink tests: the guide's samples with their id, time and
endpoint changed, so tests can make many distinct, realistic documents."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from typing import Any

from schemas.timestamps import format_event_time, format_usage_time
from tests.guide_samples import EXPECTED_EVENTS, EXPECTED_USAGE


def event_doc(sample: str, doc_id: int, moment: datetime, endpoint_id: int | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(EXPECTED_EVENTS[sample])
    doc["id"] = doc_id
    doc["timestamp"] = format_event_time(moment)
    if endpoint_id is not None:
        doc["endpoint"]["id"] = endpoint_id
    return doc


def usage_doc(doc_id: int, end: datetime, endpoint_id: int = 8392037) -> dict[str, Any]:
    """A 45 s interim usage record ending at ``end``."""
    doc = copy.deepcopy(EXPECTED_USAGE["5.2"])
    doc["id"] = doc_id
    doc["endpoint"]["id"] = endpoint_id
    doc["start_timestamp"] = format_usage_time(end - timedelta(seconds=45))
    doc["end_timestamp"] = format_usage_time(end)
    return doc


def kinesis_documents(client: Any, stream_name: str) -> list[dict[str, Any]]:
    """Every record of a Kinesis stream (moto's), from the start of each shard, as documents."""
    documents = []
    for shard in client.list_shards(StreamName=stream_name)["Shards"]:
        iterator = client.get_shard_iterator(StreamName=stream_name, ShardId=shard["ShardId"],
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            response = client.get_records(ShardIterator=iterator, Limit=10_000)
            documents += [json.loads(record["Data"]) for record in response["Records"]]
            if not response["Records"]:
                break
            iterator = response["NextShardIterator"]
    return documents

"""The REST API (``/api/v1``): data streams, their status, test destination,
and the guide's look-ups. FastAPI serves its OpenAPI 3 description at
``/api/v1/openapi.json`` (docs/portal-api.md is generated from it).

Every request carries an API key (``X-API-Key: dsk_...`` or ``Authorization:
Bearer dsk_...``); without a valid one the answer is 401. Models refuse unknown
fields (``extra="forbid"``): a misspelt optional field would otherwise be
dropped without a word. What the models let through is checked by the job's own
rules in :mod:`portal.streams` (422 naming the field).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from portal import catalogue
from portal.auth import KEY_HEADER, Principal, authenticate
from portal.destination_test import try_destination
from portal.streams import FieldError, StateConflictError, StreamNotFoundError, StreamService

INT64 = Field(ge=-(2**63), le=2**63 - 1)
Text = Annotated[str, Field(max_length=2048)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecretReference(Strict):
    """Where an operator keeps a credential on the workers: an environment
    variable (``DATASTREAMER_...``) or a file in ``--secrets_dir``."""

    env: Annotated[str | None, Field(max_length=255)] = None
    file: Annotated[str | None, Field(max_length=1024)] = None


#: A credential: its value (sealed before it is stored, never shown again) or a reference.
Secret = Annotated[str, Field(min_length=1, max_length=4096)] | SecretReference


class RestIn(Strict):
    url: Text
    method: Literal["POST", "PUT"] | None = None
    headers: dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=8192)]] | None = None
    auth_header: Annotated[str | None, Field(max_length=256)] = None
    auth_secret: Secret | None = None
    #: Made by the portal (and shown once) when not given.
    signing_secret: Secret | None = None


class KinesisIn(Strict):
    access_key_id: Secret
    secret_access_key: Secret
    region: Annotated[str, Field(max_length=64)]
    stream_name: Annotated[str, Field(max_length=256)]
    endpoint_url: Text | None = None


class S3In(Strict):
    access_key_id: Secret
    secret_access_key: Secret
    bucket: Annotated[str, Field(max_length=256)]
    region: Annotated[str | None, Field(max_length=64)] = None
    prefix: Annotated[str | None, Field(max_length=1024)] = None
    endpoint_url: Text | None = None
    escape_formulas: bool | None = None


class DataDogIn(Strict):
    api_key: Secret
    application_key: Secret | None = None
    site: Annotated[str | None, Field(max_length=253)] = None
    url: Text | None = None


class RestPatch(Strict):
    url: Text | None = None
    method: Literal["POST", "PUT"] | None = None
    headers: dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=8192)]] | None = None
    auth_header: Annotated[str | None, Field(max_length=256)] = None
    auth_secret: Secret | None = None
    signing_secret: Secret | None = None


class KinesisPatch(Strict):
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    region: Annotated[str | None, Field(max_length=64)] = None
    stream_name: Annotated[str | None, Field(max_length=256)] = None
    endpoint_url: Text | None = None


class S3Patch(Strict):
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    bucket: Annotated[str | None, Field(max_length=256)] = None
    region: Annotated[str | None, Field(max_length=64)] = None
    prefix: Annotated[str | None, Field(max_length=1024)] = None
    endpoint_url: Text | None = None
    escape_formulas: bool | None = None


class DataDogPatch(Strict):
    api_key: Secret | None = None
    application_key: Secret | None = None
    site: Annotated[str | None, Field(max_length=253)] = None
    url: Text | None = None


class FiltersIn(Strict):
    event_type_ids: Annotated[list[Annotated[int, Field(ge=0, le=15)]] | None, Field(max_length=16)] = None
    alert: bool | None = None


class BatchingIn(Strict):
    bulk_size: Annotated[int | None, INT64] = None
    rotation_seconds: Annotated[int | None, INT64] = None
    flush_size: Annotated[int | None, INT64] = None
    metrics_interval_seconds: Annotated[int | None, INT64] = None


StreamType = Literal["usage", "events", "both"]
ApiType = Literal["rest_api", "rest_api_bulk", "aws_kinesis", "aws_s3", "datadog"]


class StreamCreate(Strict):
    stream_type: StreamType
    api_type: ApiType
    historic_data: bool = False
    #: Required with an operator key; an organisation's key may only give its own.
    organisation_id: Annotated[int | None, INT64] = None
    rest: RestIn | None = None
    kinesis: KinesisIn | None = None
    s3: S3In | None = None
    datadog: DataDogIn | None = None
    filters: FiltersIn | None = None
    batching: BatchingIn | None = None


class StreamUpdate(Strict):
    stream_type: StreamType | None = None
    api_type: ApiType | None = None
    historic_data: bool | None = None
    rest: RestPatch | None = None
    kinesis: KinesisPatch | None = None
    s3: S3Patch | None = None
    datadog: DataDogPatch | None = None
    filters: FiltersIn | None = None
    batching: BatchingIn | None = None


class StatusOut(BaseModel):
    state: Literal["Running", "Paused", "Error", "Pending"]
    #: Error: the job's token (unreachable, auth_failed, throttled, ...); Pending: awaiting_history.
    reason: str | None
    last_data: str | None
    remote_status: str | None
    circuit: str | None
    next_probe_at: str | None
    reported_at: str | None
    delivered_last_hour: int
    delivered_last_day: int
    parked_last_hour: int
    parked_last_day: int


class StreamOut(BaseModel):
    id: str
    organisation_id: int
    stream_type: StreamType
    api_type: ApiType
    historic_data: bool
    created_at: str
    updated_at: str
    url: str | None = None
    #: The destination block of the API type: credentials masked.
    rest: dict[str, Any] | None = None
    kinesis: dict[str, Any] | None = None
    s3: dict[str, Any] | None = None
    datadog: dict[str, Any] | None = None
    filters: dict[str, Any] | None = None
    batching: dict[str, Any] | None = None
    status: StatusOut


class CreatedOut(StreamOut):
    #: A REST stream's signing secret, made by the portal: shown this once.
    signing_secret: str | None = None


class DeliveryOut(BaseModel):
    started_at: str
    status: str
    remote_status: str | None
    documents: int
    attempts: int


class HourOut(BaseModel):
    hour: str
    delivered: int
    parked: int


class TestOut(BaseModel):
    ok: bool
    #: The HTTP code or AWS error code the destination answered, or the job's error token.
    remote_status: str | None
    error: str | None
    duration_ms: int


class Message(BaseModel):
    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class FieldProblems(BaseModel):
    detail: list[FieldProblem]


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "No valid API key"},
    422: {"model": FieldProblems, "description": "A field the job would refuse"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Message, "description": "No such data stream"}}


def _connection(request: Request) -> Iterator[Connection]:
    with request.app.state.engine.begin() as connection:
        yield connection


def principal(request: Request, connection: Annotated[Connection, Depends(_connection)],
              x_api_key: Annotated[str | None, Header(alias=KEY_HEADER)] = None,
              authorization: Annotated[str | None, Header()] = None) -> Principal:
    key = x_api_key
    if key is None and authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    found = authenticate(connection, key)
    if found is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid API key is required (X-API-Key)",
                            headers={"WWW-Authenticate": "Bearer"})
    return found


def service(request: Request, connection: Annotated[Connection, Depends(_connection)]) -> StreamService:
    state = request.app.state
    return StreamService(connection, state.sealer, state.rules)


Caller = Annotated[Principal, Depends(principal)]
Service = Annotated[StreamService, Depends(service)]
StreamId = Annotated[str, Field(max_length=128)]

router = APIRouter(prefix="/api/v1", responses=ERRORS)


def install_error_answers(app: FastAPI) -> None:
    """The service's errors as the API answers them, in one place: an unknown
    stream (or another organisation's: the same answer) 404, a field the job
    would refuse 422 naming it, a state the operation does not apply to 409."""

    @app.exception_handler(StreamNotFoundError)
    async def _not_found(request: Request, err: StreamNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": "data stream not found"}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(FieldError)
    async def _field_problem(request: Request, err: FieldError) -> JSONResponse:
        problem = {"loc": ["body", *err.field.split(".")], "msg": str(err), "type": "value_error"}
        return JSONResponse({"detail": [problem]}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(StateConflictError)
    async def _conflict(request: Request, err: StateConflictError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=status.HTTP_409_CONFLICT)


@router.get("/data-streams", response_model=list[StreamOut], tags=["data streams"])
def list_streams(caller: Caller, streams: Service) -> list[dict[str, Any]]:
    """The caller's data streams with their status (an operator's: every organisation's)."""
    return streams.list(caller)


@router.post("/data-streams", response_model=CreatedOut, status_code=201, tags=["data streams"])
def create_stream(body: StreamCreate, caller: Caller, streams: Service) -> dict[str, Any]:
    """A new stream, active at once (Pending while its historic data is delivered)."""
    view, signing_secret = streams.create(caller, body.model_dump(exclude_unset=True))
    return {**view, "signing_secret": signing_secret}


@router.get("/data-streams/{stream_id}", response_model=StreamOut, responses=NOT_FOUND, tags=["data streams"])
def read_stream(stream_id: str, caller: Caller, streams: Service) -> dict[str, Any]:
    """One stream, credentials masked, with its status."""
    return streams.get(caller, stream_id)


@router.patch("/data-streams/{stream_id}", response_model=StreamOut, responses=NOT_FOUND, tags=["data streams"])
def update_stream(stream_id: str, body: StreamUpdate, caller: Caller, streams: Service) -> dict[str, Any]:
    """Change the fields the body gives; a credential left out keeps its value."""
    return streams.update(caller, stream_id, body.model_dump(exclude_unset=True))


@router.delete("/data-streams/{stream_id}", status_code=204, responses=NOT_FOUND, tags=["data streams"])
def delete_stream(stream_id: str, caller: Caller, streams: Service) -> Response:
    """The stream and everything kept about it; nothing more is delivered to it."""
    streams.delete(caller, stream_id)
    return Response(status_code=204)


@router.post("/data-streams/{stream_id}/deactivate", response_model=StreamOut, responses=NOT_FOUND,
             tags=["data streams"])
def deactivate_stream(stream_id: str, caller: Caller, streams: Service) -> dict[str, Any]:
    """Pause: documents are kept (parked) from the job's next refresh on."""
    return streams.deactivate(caller, stream_id)


@router.post("/data-streams/{stream_id}/activate", response_model=StreamOut, responses=NOT_FOUND,
             tags=["data streams"])
def activate_stream(stream_id: str, caller: Caller, streams: Service) -> dict[str, Any]:
    """Resume: the kept documents are delivered first, then live ones."""
    return streams.activate(caller, stream_id)


@router.post("/data-streams/{stream_id}/restart", response_model=StreamOut,
             responses={**NOT_FOUND, 409: {"model": Message, "description": "The stream is not in Error"}},
             tags=["data streams"])
def restart_stream(stream_id: str, caller: Caller, streams: Service) -> dict[str, Any]:
    """A stream in Error is tried again at the job's next refresh."""
    return streams.restart(caller, stream_id)


@router.get("/data-streams/{stream_id}/status", response_model=StatusOut, responses=NOT_FOUND, tags=["status"])
def stream_status(stream_id: str, caller: Caller, streams: Service) -> dict[str, Any]:
    """Running, Paused, Error (with its reason) or Pending; last data, remote
    status, documents delivered and parked over the last hour and day."""
    return streams.status(caller, stream_id)


@router.get("/data-streams/{stream_id}/deliveries", response_model=list[DeliveryOut], responses=NOT_FOUND,
            tags=["status"])
def recent_deliveries(stream_id: str, caller: Caller, streams: Service) -> list[dict[str, Any]]:
    """The stream's last batches as the job reported them, newest first."""
    return streams.recent(caller, stream_id)


@router.get("/data-streams/{stream_id}/hourly", response_model=list[HourOut], responses=NOT_FOUND,
            tags=["status"])
def hourly_counts(stream_id: str, caller: Caller, streams: Service) -> list[dict[str, Any]]:
    """Documents delivered and parked in each of the last 24 hours, oldest first."""
    return streams.hourly(caller, stream_id)


@router.post("/data-streams/{stream_id}/test", response_model=TestOut, responses=NOT_FOUND, tags=["data streams"])
def test_stream_destination(stream_id: str, request: Request, caller: Caller, streams: Service) -> dict[str, Any]:
    """Send one sample document of the stream's type through the job's sink
    code, and answer with what the destination said. The stream's counts and
    status are not touched."""
    stream = streams.job_stream(caller, stream_id)
    return try_destination(stream, request.app.state.rules, request.app.state.sealer)


@router.get("/stream-types", tags=["look-ups"])
def stream_types(caller: Caller) -> list[dict[str, str]]:
    """Usage data, event data, or both (the guide's section 2.2)."""
    return catalogue.stream_types()


@router.get("/api-types", tags=["look-ups"])
def api_types(caller: Caller) -> list[dict[str, Any]]:
    """Each API type with the fields the guide's section 6 asks for."""
    return catalogue.api_types()


@router.get("/event-types", tags=["look-ups"])
def event_types(caller: Caller) -> list[dict[str, Any]]:
    """The event types 0 to 15 of the guide's section 3 (a stream's ``filters.event_type_ids``)."""
    return catalogue.event_types()

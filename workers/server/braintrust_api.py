"""The reference SDK's HTTP API, the part its logging uses: with ``BRAINTRUST_API_URL`` and
``BRAINTRUST_APP_URL`` pointing at ``tracer serve`` and ``BRAINTRUST_API_KEY`` one of its keys,
the unmodified ``braintrust`` package logs into this server (docs/interop.md, "As built", lists
the calls and their bodies; the README's "Using the reference SDK with tracer serve").

- Every call needs ``Authorization: Bearer <key>``, checked as the ingest API checks it
  (``ingest_api.authenticated``: the server's key or a stored key; never the session cookie).
  A key limited to projects gets 403 for another project's registration or rows.
- Login (``POST /api/apikey/login``) answers one organisation, ``tracer``, whose ``api_url`` is
  this server as the client reached it.
- Projects and experiments are our containers: a project's id is ``rows.project_id(name)``; an
  experiment's is made as ``tracer.init`` makes it (``tracer.experiment.experiment_id``: new for
  every registration, or derived from the names when the SDK asks to continue one,
  ``ensure_new: false`` / ``update: true``), and a name given twice is kept as it is (no
  suffix). Registering records the container in the store (``Registry``), so rows that come
  later, even after a restart, find it.
- ``POST /logs3``: the rows become ours (``to_entries``) and go through the server's one write
  path (``ingest.Ingest.submit``: one transaction, answered once committed). A row with
  ``_is_merge`` merges into the stored row; any other replaces it whole, as in the reference.
  Images are flagged and large base64 taken out as the aggregator does (``workers.media``).
- Payloads over ``logs3_payload_max_bytes`` (``GET /version``: the ingest body limit) come by
  ``/logs3/overflow``: a signed URL of this server to PUT the payload to, then ``/logs3``
  naming it. Attachments come the same way (``/attachment``, the PUT, ``/attachment/status``)
  and are stored as ours: the blob in the store's attachment area, the record in the store.
  A signed URL carries a token made with a secret of this server process (HMAC-SHA256), good
  for ``URL_LIFETIME`` seconds, for one object: never the API key.
- ``GET /v1/experiment/{id}/summarize``: ``Experiment.summarize()``'s score means and metric
  means, compared with the project's previous experiment (or the one asked for).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import urllib.parse
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

import tracer
from tracer import attachments as tracer_attachments
from tracer import config, wire
from tracer.experiment import experiment_id, generated_name, summarize_rows

from .. import media
from ..attachments import REFERENCE_KEY
from ..rows import PROJECT_NAMESPACE, ROW_FIELDS, Container, project_id
from ..store import StoreReader
from .api import JSON, error
from .bodies import BodyError, content_encoding, decompress, read_body
from .ingest import BadBatch, Ingest, IngestError
from .ingest_api import INFLATION, Limits, authenticated, ingest_error
from .ingest_auth import Principal

ORG_NAME = "tracer"  #: the one organisation login answers
ORG_ID = str(uuid.uuid5(PROJECT_NAMESPACE, "org:tracer"))
URL_LIFETIME = 900  #: seconds a signed upload URL is good for
MAX_NAME = 1024  #: characters of a project or experiment name
MAX_TEXT = 1024  #: characters of a file name, a content type, an error message kept
MAX_REGISTRY = 10_000  #: projects and experiments remembered in memory (the store has them all)
OVERFLOW_AGE = 4 * URL_LIFETIME  #: an overflow payload never named by a /logs3 is removed after
API_VERSION = 2  #: the ``api_version`` of ``/logs3`` bodies
#: What the SDK names an attachment by: a UUID (its ``uuid4()``), or our 32 hex digits.
ATTACHMENT_KEY = REFERENCE_KEY
OVERFLOW_KEY = re.compile(r"[0-9a-f]{32}")
T = TypeVar("T")

# The fields of a /logs3 row, by what becomes of them (docs/interop.md, "As built"):
#: where the row belongs (read, then set again from its container: ``ingest.check_batch``)
OBJECT_FIELDS = ("project_id", "log_id", "experiment_id")
#: the reference's other containers, which this server does not keep
OTHER_OBJECTS = ("dataset_id", "prompt_session_id", "function_data")
#: the hosted service's bookkeeping, which our store has no place for: dropped
HOSTED_FIELDS = ("org_id", "_xact_id", "_audit_source", "_audit_metadata",
                 "_async_scoring_control", "_skip_async_scoring")
#: parts of the write protocol this server does not do: the row is refused, saying so
UNSUPPORTED = {
    "_object_delete": "deleting rows is not supported by tracer serve",
    "_merge_paths": "merges limited to paths (_merge_paths) are not supported by tracer serve",
    "_parent_id": "_parent_id (older SDKs) is not supported by tracer serve: upgrade the SDK, "
                  "which sends span_parents",
}


# -- signed URLs --------------------------------------------------------------------------------


class Signer:
    """Tokens for the signed upload URLs: a payload and its HMAC-SHA256 under a secret of this
    server process, base64url. Only this process can make one; each names one object and
    expires."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def sign(self, payload: dict[str, Any], lifetime: float = URL_LIFETIME) -> str:
        body = _b64(json.dumps({**payload, "exp": time.time() + lifetime},
                               separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac(body))}"

    def verify(self, token: str, kind: str) -> dict[str, Any] | None:
        """The payload of a token of this ``kind`` (``"a"``: an attachment, ``"o"``: an overflow
        payload) that this process made and that has not expired; None for any other."""
        if len(token) > 4096:
            return None
        body, _, mac = token.partition(".")
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(body)):
                return None
            payload = json.loads(_unb64(body))
        except (ValueError, binascii.Error):
            return None
        if (type(payload) is not dict or payload.get("k") != kind
                or not isinstance(payload.get("exp"), (int, float))
                or payload["exp"] < time.time()):
            return None
        return payload

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- projects and experiments ------------------------------------------------------------------


class Registry:
    """The projects and experiments the SDK registered, by id: a project's name from its id
    (a uuid5 of the name cannot be read back), an experiment's container from its id.

    Registering records the container in the store through the write path (so a restart loses
    nothing); lookups ask memory first (bounded to ``MAX_REGISTRY`` of each), then the store's
    containers."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self._lock = threading.Lock()
        self._projects: OrderedDict[str, str] = OrderedDict()  # project id -> name
        self._experiments: OrderedDict[str, Container] = OrderedDict()  # id -> container

    def register_project(self, name: str) -> dict[str, Any]:
        """Record the project's logs container (once); its object as the SDK reads it."""
        pid = project_id(name)
        if not self._known(self._projects, pid):
            self.ingest.record_containers([Container(wire.logs_container(name))])
        self._remember(self._projects, pid, name)
        return project_object(name)

    def register_experiment(self, project: str, name: str | None, continuing: bool,
                            extra: dict[str, Any]) -> dict[str, Any]:
        """Record an experiment of ``project`` (a new one, or with ``continuing`` the one of
        that name started so); its object as the SDK reads it."""
        if name is None:
            name = generated_name()
        container = Container(wire.experiment_container(project, experiment_id(
            project, name, continuing), name))
        assert container.experiment_id is not None
        if not self._known(self._experiments, container.experiment_id):
            self.ingest.record_containers([container])
        self._remember(self._projects, container.project_id, project)
        self._remember(self._experiments, container.experiment_id, container)
        return experiment_object(container, extra)

    def project_name(self, pid: str, reader: StoreReader | None) -> str | None:
        """The name of the project with this id, if it is known here or in the store."""
        with self._lock:
            name = self._projects.get(pid)
        if name is None and reader is not None:
            for record in reader.containers():
                if record["project_id"] == pid:
                    name = record["project_name"]
                    self._remember(self._projects, pid, name)
                    break
        return name

    def experiment(self, eid: str, reader: StoreReader | None) -> Container | None:
        """The container of the experiment with this id, if it is known here or in the
        store."""
        with self._lock:
            found = self._experiments.get(eid)
        if found is None and reader is not None:
            for record in reader.containers():
                if record["kind"] == "experiment" and record["experiment_id"] == eid:
                    found = Container(wire.experiment_container(
                        record["project_name"], eid, record["experiment_name"]))
                    self._remember(self._experiments, eid, found)
                    break
        return found

    def _known(self, table: OrderedDict, key: str) -> bool:
        with self._lock:
            return key in table

    def _remember(self, table: OrderedDict, key: str, value: Any) -> None:
        with self._lock:
            table[key] = value
            table.move_to_end(key)
            while len(table) > MAX_REGISTRY:
                table.popitem(last=False)


def project_object(name: str) -> dict[str, Any]:
    """A project as the reference's API describes one."""
    return {"id": project_id(name), "name": name, "org_id": ORG_ID, "description": None,
            "created": None, "deleted_at": None, "user_id": None, "settings": None}


def experiment_object(container: Container, extra: dict[str, Any] | None = None,
                      created: str | None = None) -> dict[str, Any]:
    """An experiment as the reference's API describes one (``extra``: what its registration
    gave, answered back and not stored, as ``tracer.init`` keeps it on the object only)."""
    extra = extra or {}
    return {"id": container.experiment_id, "name": container.experiment_name,
            "project_id": container.project_id, "description": extra.get("description"),
            "created": created, "repo_info": extra.get("repo_info"), "commit": None,
            "base_exp_id": extra.get("base_exp_id"), "deleted_at": None,
            "dataset_id": extra.get("dataset_id"), "dataset_version": None,
            "public": bool(extra.get("public", False)), "user_id": None,
            "metadata": extra.get("metadata"), "tags": extra.get("tags")}


def checked_name(value: object, what: str) -> str:
    """A project or experiment name a container key can hold; BadRequest-style ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: must be a non-empty string")
    if len(value) > MAX_NAME:
        raise ValueError(f"{what}: at most {MAX_NAME} characters")
    if wire.SEP in value:
        raise ValueError(f"{what}: must not contain the control character \\x1f")
    return value


@authenticated
async def base_experiment(request: Request, principal: Principal) -> Response:
    """``POST /api/base_experiment/get_id`` ``{"id"}`` (the TypeScript SDK's
    ``summarize()``, the Python SDK's ``fetch_base_experiment()``): the experiment it is
    compared with, the project's previous one (400 when there is none, as the reference
    answers)."""
    body = _map(await _json_body(request))
    eid = body.get("id")
    if not isinstance(eid, str):
        raise _bad("id: must be an experiment's id")
    found = await _with_experiment(request, principal, eid, lambda reader, found: (
        found, previous_experiment(reader, found)))
    if found[1] is None:
        raise _bad("this experiment has no base experiment")
    return JSON({"base_exp_id": found[1]["id"], "base_exp_name": found[1]["name"],
                 "base_exp_project_id": found[0].project_id})


@authenticated
async def experiment_comparison(request: Request, principal: Principal) -> Response:
    """``GET /experiment-comparison2?experiment_id=&base_experiment_id=`` (the TypeScript
    SDK's ``summarize()``): the scores and metrics as ``/v1/experiment/{id}/summarize`` has
    them, compared with ``base_experiment_id`` when given."""
    base = request.query_params.get("base_experiment_id")
    summary = await _with_experiment(
        request, principal, request.query_params.get("experiment_id", ""),
        lambda reader, found: _summary(reader, found, True, base, False))
    return JSON({"scores": summary["scores"], "metrics": summary["metrics"]})


# -- rows ---------------------------------------------------------------------------------------


class Mapped:
    """What ``to_entries`` made of a /logs3 body: the ``(container, row, replace)`` entries
    for ``Ingest.submit``, the rows left out, counted by reason, and the fields left out."""

    def __init__(self) -> None:
        self.entries: list[tuple[Container, dict, bool]] = []
        self.skipped: Counter = Counter()
        self.dropped: list[str] = []  # fields of no row of ours, one entry per row


def to_entries(rows: object, registry: Registry, reader: StoreReader | None,
               images: bool = False, extract_over: int = 0,
               adopt: media.Adopt | None = None) -> Mapped:
    """The rows of a /logs3 body as our partial rows, each with its container and whether it
    replaces the stored row (no ``_is_merge``). Raises ``BadBatch`` (naming the row's index)
    for a row this server cannot take; comment rows (``log_feedback(comment=...)``: the
    hosted service's comment threads) are left out, counted as ``comments``, and so are
    fields that no row of ours has (``Mapped.dropped``; a row's fields are otherwise checked
    by ``Ingest.submit``, which refuses the batch for a bad one). As the
    aggregator does (``workers.media``): with ``images`` (the body may hold some:
    ``media.may_hold_images``) images are flagged; base64 strings longer than
    ``extract_over`` characters are handed to ``adopt`` and replaced by a reference."""
    if not isinstance(rows, list):
        raise BadBatch("rows: must be a list of rows")
    mapped = Mapped()
    for index, row in enumerate(rows):
        try:
            entry = _entry(row, registry, reader, mapped.dropped)
        except ValueError as exc:
            raise BadBatch(f"row {index}: {exc}", index) from None
        if entry is None:
            mapped.skipped["comments"] += 1
            continue
        if images or adopt is not None:
            media.mark_and_extract(entry[1], mark_images=images, extract_over=extract_over,
                                   adopt=adopt)
        mapped.entries.append(entry)
    return mapped


def _entry(row: object, registry: Registry, reader: StoreReader | None, dropped: list[str]
           ) -> tuple[Container, dict, bool] | None:
    if type(row) is not dict:
        raise ValueError(f"a row must be a map, not {type(row).__name__}")
    for field, why in UNSUPPORTED.items():
        if row.get(field) not in (None, False, [], ()):
            raise ValueError(f"{field}: {why}")
    if "comment" in row:
        return None
    merge = row.get("_is_merge")
    if merge is not None and type(merge) is not bool:
        raise ValueError("_is_merge: must be true or false")
    container = _container(row, registry, reader)
    out = {}
    for name, value in row.items():
        if name in ROW_FIELDS and name not in OBJECT_FIELDS:
            out[name] = value
        elif name not in OBJECT_FIELDS and name not in HOSTED_FIELDS and name != "_is_merge":
            # A field of no row of ours (``span.log(foo=...)``, which the reference's Python
            # SDK lets through): the row is kept without it, and the drop counted.
            dropped.append(str(name))
    return container, out, not merge


def _container(row: dict, registry: Registry, reader: StoreReader | None) -> Container:
    for other in OTHER_OBJECTS:
        if row.get(other) is not None:
            raise ValueError(f"{other}: tracer serve keeps project logs and experiments only")
    eid = row.get("experiment_id")
    if eid is not None:
        if type(eid) is not str:
            raise ValueError("experiment_id: must be a string")
        found = registry.experiment(eid, reader)
        if found is None:
            raise ValueError(f"experiment_id {eid!r:.80}: no such experiment here (register it "
                             "first: POST /v1/experiment)")
        return found
    pid = row.get("project_id")
    if pid is None:
        raise ValueError("the row names no container: project_id (with log_id \"g\") or "
                         "experiment_id")
    if type(pid) is not str:
        raise ValueError("project_id: must be a string")
    if row.get("log_id") not in (None, "g"):
        raise ValueError(f"log_id {row.get('log_id')!r:.40}: project logs are \"g\"")
    name = registry.project_name(pid, reader)
    if name is None:
        raise ValueError(f"project_id {pid!r:.80}: no such project here (register it first: "
                         "POST /v1/project)")
    return Container(wire.logs_container(name))


# -- the application's part ---------------------------------------------------------------------


class BraintrustAPI:
    """This API's state in one server: the registry, the signer, where overflow payloads and
    incoming attachments wait; its counters (``braintrust_*``) are the write path's
    (``Ingest.count``: ``/api/stats`` shows them as ``ingest``)."""

    def __init__(self, store: str, ingest: Ingest, limits: Limits) -> None:
        self.store = store
        self.ingest = ingest
        self.limits = limits
        self.registry = Registry(ingest)
        self.signer = Signer()
        #: base64 strings longer than this become attachments, as the aggregator's setting
        self.inline_limit: int = config.value_or_default("MAX_INLINE_BASE64")
        self._swept = 0.0

    @property
    def overflow_limit(self) -> int:
        """The largest overflow payload taken (bytes): what an ingest body may inflate to."""
        return INFLATION * self.limits.max_body

    def area(self, name: str) -> str:
        """A private directory of the store's attachment area (``overflow``, ``incoming``)."""
        path = os.path.join(tracer_attachments.store_dir(self.store), name)
        tracer_attachments.make_private(path)
        return path

    def sweep_overflow(self) -> None:
        """Remove overflow payloads older than ``OVERFLOW_AGE`` (never named by a /logs3), at
        most once a minute."""
        now = time.time()
        if now - self._swept < 60:
            return
        self._swept = now
        directory = self.area("overflow")
        for entry in os.scandir(directory):
            try:
                if now - entry.stat().st_mtime > OVERFLOW_AGE:
                    os.unlink(entry.path)
                    self.ingest.count("braintrust_overflow_expired", 1)
            except OSError:
                pass


def _state(request: Request) -> BraintrustAPI:
    state: BraintrustAPI = request.app.state.braintrust
    return state


def _reader(request: Request) -> StoreReader | None:
    reader: StoreReader | None = request.app.state.stores.reader()
    return reader


def base_url(request: Request) -> str:
    """This server as the client reached it (for the URLs answered)."""
    return str(request.base_url).rstrip("/")


def _allowed(principal: Principal, project: str) -> None:
    if principal.projects is not None and project not in principal.projects:
        raise BodyError(403, f"this key may not write to project {project!r:.200}")


async def _json_body(request: Request, limit: int = 1 << 20) -> Any:
    """A small JSON body (registrations, attachment requests): 413 over ``limit``."""
    body = await read_body(request, limit)
    if not body:
        return {}
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BodyError(400, f"the body is not JSON: {exc}"[:300]) from None


def _map(document: Any, what: str = "the body") -> dict[str, Any]:
    if type(document) is not dict:
        raise BodyError(400, f"{what}: must be a JSON object")
    return document


def _bad(message: str) -> BodyError:
    return BodyError(400, message)


# -- login, version -----------------------------------------------------------------------------


@authenticated
async def login(request: Request, principal: Principal) -> Response:
    """``POST /api/apikey/login``: the organisations of the key: one, ``tracer``."""
    return JSON({"org_info": [{
        "id": ORG_ID, "name": ORG_NAME, "api_url": base_url(request), "proxy_url": None,
        "realtime_url": None, "is_universal_api": False, "git_metadata": None}]})


@authenticated
async def version(request: Request, principal: Principal) -> Response:
    """``GET /version``: the largest /logs3 body taken (larger ones use the overflow)."""
    return JSON({"version": tracer.__version__, "server": "tracer serve",
                 "logs3_payload_max_bytes": _state(request).limits.max_body})


# -- projects and experiments -------------------------------------------------------------------


@authenticated
async def post_project(request: Request, principal: Principal) -> Response:
    """``POST /v1/project`` ``{"name"}``: the project, registered."""
    body = _map(await _json_body(request))
    try:
        name = checked_name(body.get("name"), "name")
    except ValueError as exc:
        raise _bad(str(exc)) from None
    _allowed(principal, name)
    found = await run_in_threadpool(_state(request).registry.register_project, name)
    return JSON(found)


@authenticated
async def register_project(request: Request, principal: Principal) -> Response:
    """``POST /api/project/register`` ``{"project_name"}`` (older SDKs): ``{"project"}``."""
    body = _map(await _json_body(request))
    try:
        name = checked_name(body.get("project_name") or "Global", "project_name")
    except ValueError as exc:
        raise _bad(str(exc)) from None
    _allowed(principal, name)
    found = await run_in_threadpool(_state(request).registry.register_project, name)
    return JSON({"project": found})


async def _project_by_id(request: Request, principal: Principal, pid: str) -> dict[str, Any]:
    state = _state(request)
    name = await run_in_threadpool(lambda: state.registry.project_name(pid, _reader(request)))
    if name is None:
        raise BodyError(404, f"project {pid!r:.80}: no such project here")
    _allowed(principal, name)
    return project_object(name)


@authenticated
async def get_project(request: Request, principal: Principal) -> Response:
    """``GET /v1/project/{id}``: the project."""
    return JSON(await _project_by_id(request, principal, request.path_params["project_id"]))


@authenticated
async def get_project_by_query(request: Request, principal: Principal) -> Response:
    """``GET /api/project?id=`` (older SDKs): the project."""
    return JSON(await _project_by_id(request, principal, request.query_params.get("id", "")))


_EXPERIMENT_EXTRA = ("description", "metadata", "tags", "repo_info", "base_exp_id", "dataset_id",
                     "public")


async def _register_experiment(request: Request, principal: Principal, project: str,
                               name: object, continuing: bool, body: dict) -> dict[str, Any]:
    try:
        checked = None if name is None else checked_name(name, "name")
    except ValueError as exc:
        raise _bad(str(exc)) from None
    _allowed(principal, project)
    extra = {k: body[k] for k in _EXPERIMENT_EXTRA if k in body}
    state = _state(request)
    return await run_in_threadpool(state.registry.register_experiment, project, checked,
                                   continuing, extra)


@authenticated
async def post_experiment(request: Request, principal: Principal) -> Response:
    """``POST /v1/experiment`` ``{"project_id", "name"?, "ensure_new"?...}``: the experiment,
    registered: a new one, or (``ensure_new`` false, with a name) the one of that name
    started so, continued."""
    body = _map(await _json_body(request))
    pid = body.get("project_id")
    if not isinstance(pid, str):
        raise _bad("project_id: must be a string (the project's id: POST /v1/project)")
    project = (await _project_by_id(request, principal, pid))["name"]
    name = body.get("name")
    continuing = body.get("ensure_new") is False and name is not None
    return JSON(await _register_experiment(request, principal, project, name, continuing, body))


@authenticated
async def register_experiment(request: Request, principal: Principal) -> Response:
    """``POST /api/experiment/register`` (older SDKs): ``{"project", "experiment"}``."""
    body = _map(await _json_body(request))
    if body.get("project_id") is not None:
        if not isinstance(body["project_id"], str):
            raise _bad("project_id: must be a string")
        project = (await _project_by_id(request, principal, body["project_id"]))["name"]
    else:
        try:
            project = checked_name(body.get("project_name") or "Global", "project_name")
        except ValueError as exc:
            raise _bad(str(exc)) from None
    name = body.get("experiment_name")
    continuing = body.get("update") is True and name is not None
    experiment = await _register_experiment(request, principal, project, name, continuing, body)
    await run_in_threadpool(_state(request).registry.register_project, project)
    return JSON({"project": project_object(project), "experiment": experiment})


def _experiments(reader: StoreReader | None) -> Iterator[tuple[Container, str]]:
    """Every experiment the store has (with its ``created``), newest first."""
    if reader is None:
        return
    records = [r for r in reader.containers() if r["kind"] == "experiment"]
    for record in reversed(records):
        yield (Container(wire.experiment_container(record["project_name"],
                                                   record["experiment_id"],
                                                   record["experiment_name"])),
               record["created"])


@authenticated
async def list_experiments(request: Request, principal: Principal) -> Response:
    """``GET /v1/experiment?experiment_name=&project_id=|project_name=``: the experiments of
    that name in that project, newest first (``{"objects": [...]}``)."""
    query = request.query_params
    name, pid, pname = (query.get("experiment_name"), query.get("project_id"),
                        query.get("project_name"))

    def find() -> list[dict[str, Any]]:
        out = []
        for container, created in _experiments(_reader(request)):
            if ((name is None or container.experiment_name == name)
                    and (pid is None or container.project_id == pid)
                    and (pname is None or container.project_name == pname)
                    and (principal.projects is None
                         or container.project_name in principal.projects)):
                out.append(experiment_object(container, created=created))
        return out

    return JSON({"objects": await run_in_threadpool(find)})


async def _with_experiment(request: Request, principal: Principal, eid: str,
                           work: Callable[[StoreReader, Container], T]) -> T:
    """``work(reader, experiment)`` in a worker thread, for the experiment with this id (404
    if there is none, 403 for a key not allowed its project). One thread for all of it: a
    store reader belongs to the thread that opened it."""
    def run() -> T:
        reader = _reader(request)
        found = None if reader is None else _state(request).registry.experiment(eid, reader)
        if found is None or reader is None:
            raise BodyError(404, f"experiment {eid!r:.80}: no such experiment here")
        _allowed(principal, found.project_name)
        return work(reader, found)

    return await run_in_threadpool(run)


@authenticated
async def get_experiment(request: Request, principal: Principal) -> Response:
    """``GET /v1/experiment/{id}``: the experiment."""
    return JSON(await _with_experiment(request, principal, request.path_params["experiment_id"],
                                       lambda reader, found: experiment_object(found)))


@authenticated
async def summarize(request: Request, principal: Principal) -> Response:
    """``GET /v1/experiment/{id}/summarize``: each score's mean and each metric's mean over
    the experiment's spans, compared with ``comparison_experiment_id`` or else the project's
    previous experiment (``diff``, rows that improved and regressed)."""
    scores_too = request.query_params.get("summarize_scores", "true").lower() != "false"
    asked = request.query_params.get("comparison_experiment_id")
    return JSON(await _with_experiment(
        request, principal, request.path_params["experiment_id"],
        lambda reader, found: _summary(reader, found, scores_too, asked)))


def previous_experiment(reader: StoreReader, container: Container) -> dict[str, Any] | None:
    """The experiment of the same project started before this one, if any (what the
    reference compares an experiment with when not told otherwise): ``id``, ``name``..."""
    listed = reader.experiments(container.project_name) or []  # newest first
    ids = [e["id"] for e in listed]
    if container.experiment_id not in ids:
        return None
    older = listed[ids.index(container.experiment_id) + 1:]
    return older[0] if older else None


def _summary(reader: StoreReader, container: Container, scores_too: bool,
             asked: str | None, pick: bool = True) -> dict[str, Any]:
    """The summary of an experiment, compared with ``asked`` (an experiment id), or, without
    one and with ``pick``, with the previous experiment of its project."""
    assert container.experiment_id is not None and container.experiment_name is not None
    rows = list(reader.rows(experiment=container.experiment_id))
    summary = summarize_rows(rows, container.project_name, container.experiment_name,
                             container.experiment_id, reader.location, scores_too)
    base: dict | None = None
    if asked is None and pick:
        previous = previous_experiment(reader, container)
        asked = previous["id"] if previous is not None else None
    if asked is not None and scores_too:
        base = reader.compare_experiments(asked, container.experiment_id)
    scores = {}
    for name, score in summary.scores.items():
        entry: dict[str, Any] = {"name": name, "score": score.score, "improvements": None,
                                 "regressions": None}
        if base is not None and name in base["scores"]:
            compared = base["scores"][name]
            if compared.get("delta") is not None:
                entry["diff"] = compared["delta"]
            deltas = [pair["deltas"][name] for pair in base["rows"] if name in pair["deltas"]]
            entry["improvements"] = sum(1 for d in deltas if d > 0)
            entry["regressions"] = sum(1 for d in deltas if d < 0)
        scores[name] = entry
    metrics = {name: {"name": name, "metric": m.mean, "unit": m.unit, "improvements": None,
                      "regressions": None} for name, m in summary.metrics.items()}
    return {"project_name": container.project_name,
            "experiment_name": container.experiment_name,
            "comparison_experiment_name": base["a"]["name"] if base is not None else None,
            "scores": scores, "metrics": metrics}


# -- rows ---------------------------------------------------------------------------------------


@authenticated
async def logs3(request: Request, principal: Principal) -> Response:
    """``POST /logs3`` ``{"rows": [...], "api_version": 2}`` (or ``{"rows": {"type":
    "logs3_overflow", "key"}}``): the rows, written whole once committed."""
    state = _state(request)
    encoding = content_encoding(request)
    body = await read_body(request, state.limits.max_body)

    def work() -> int:
        data = decompress(body, encoding, state.overflow_limit)
        document = _map(_parse(data))
        version_ = document.get("api_version", API_VERSION)
        if version_ != API_VERSION:
            raise _bad(f"api_version {version_!r:.20}: this server speaks {API_VERSION}")
        rows = document.get("rows")
        overflow = None
        if type(rows) is dict and rows.get("type") == "logs3_overflow":
            overflow = _overflow_path(state, rows.get("key"))
            try:
                with open(overflow, "rb") as f:
                    data = f.read(state.overflow_limit + 1)
            except FileNotFoundError:
                raise _bad("the overflow payload named was never uploaded, or has expired") \
                    from None
            rows = _map(_parse(data), "the overflow payload").get("rows")
        committed = _write(state, principal, rows, data, _reader(request))
        if overflow is not None:
            _unlink(overflow)
        return committed

    return JSON({"committed": await run_in_threadpool(work)})


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"the body is not JSON: {exc}"[:300]) from None


def _write(state: BraintrustAPI, principal: Principal, rows: object, data: bytes,
           reader: StoreReader | None) -> int:
    """Map the rows, store what the mapping took out of them as attachments, write them."""
    limit = state.inline_limit
    adopted: list[tuple[str, str, int, str, str]] = []  # key, sha256, size, filename, type

    def adopt(content: bytes, filename: str, content_type: str) -> str:
        key = tracer_attachments.new_key()
        adopted.append((key, _store_bytes(state, content), len(content), filename,
                        content_type))
        return key

    large = bool(limit) and len(data) > limit  # (no shorter body holds a longer string)
    try:
        mapped = to_entries(rows, state.registry, reader, media.may_hold_images(data),
                            limit if large else 0, adopt if large else None)
    except BadBatch:
        state.ingest.count("braintrust_batches_refused", 1)
        raise
    for reason, count in mapped.skipped.items():
        state.ingest.count(f"braintrust_rows_skipped_{reason}", count)
    if mapped.dropped:
        state.ingest.count("braintrust_fields_dropped", len(mapped.dropped))
        state.ingest.log("braintrust_fields", f"/logs3: left out fields that no row has: "
                         f"{', '.join(sorted(set(mapped.dropped))[:5])!s:.300} "
                         f"({len(mapped.dropped)} so far in this request)")
    for key, sha, size, filename, content_type in adopted:
        state.ingest.record_attachment(key, sha256=sha, size=size, filename=filename,
                                       content_type=content_type, error=None, source="base64",
                                       logged=time.time())
        state.ingest.count("braintrust_attachments_extracted", 1)
    committed = state.ingest.submit(mapped.entries, projects=principal.projects)
    state.ingest.count("braintrust_rows", committed)
    return committed


def _overflow_path(state: BraintrustAPI, key: object) -> str:
    if not isinstance(key, str) or not OVERFLOW_KEY.fullmatch(key):
        raise _bad("key: not an overflow key of this server")
    return os.path.join(state.area("overflow"), key + ".json")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@authenticated
async def request_overflow(request: Request, principal: Principal) -> Response:
    """``POST /logs3/overflow`` ``{"size_bytes", ...}``: where to PUT a payload too large for
    one /logs3 request."""
    state = _state(request)
    body = _map(await _json_body(request))
    size = body.get("size_bytes")
    if type(size) is not int or size < 0:
        raise _bad("size_bytes: must be a whole number of bytes")
    if size > state.overflow_limit:
        raise BodyError(413, f"the payload is {size} bytes; this server takes at most "
                             f"{state.overflow_limit}", state.overflow_limit)
    await run_in_threadpool(state.sweep_overflow)
    key = secrets.token_hex(16)
    token = state.signer.sign({"k": "o", "key": key, "size": size})
    return JSON({"method": "PUT", "signedUrl": f"{base_url(request)}/logs3/overflow/{token}",
                 "headers": {"Content-Type": "application/json"}, "key": key})


async def upload_overflow(request: Request) -> Response:
    """``PUT /logs3/overflow/{token}``: the payload itself (the token, not a key, allows it)."""
    state = _state(request)
    payload = state.signer.verify(request.path_params["token"], "o")
    if payload is None:
        return error(403, "this upload URL is not valid (expired, or not made by this server)")
    try:
        path = _overflow_path(state, payload.get("key"))
        await _receive(request, path, int(payload["size"]))
    except BodyError as exc:
        return ingest_error(exc)
    state.ingest.count("braintrust_overflow_payloads", 1)
    return JSON({})


async def _receive(request: Request, path: str, limit: int,
                   digest: Any = None) -> int:
    """Stream the body into ``path`` (written aside, 0600, then renamed), at most ``limit``
    bytes (413 beyond); feed ``digest`` with it; its size."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BodyError(413, f"the body is {int(declared)} bytes; at most {limit} here", limit)
    aside = f"{path}.{secrets.token_hex(4)}.part"
    size = 0
    try:
        with os.fdopen(config.open_private(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL),
                       "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyError(413, f"the body is over {limit} bytes, the most taken here",
                                    limit)
                if digest is not None:
                    digest.update(chunk)
                f.write(chunk)
        os.replace(aside, path)
    finally:
        _unlink(aside)
    return size


# -- attachments --------------------------------------------------------------------------------


def _text(body: dict, field: str, required: bool = True) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise _bad(f"{field}: must be a non-empty string")
    return value[:MAX_TEXT]


@authenticated
async def request_attachment(request: Request, principal: Principal) -> Response:
    """``POST /attachment`` ``{"key", "filename", "content_type"}``: where to PUT its bytes."""
    state = _state(request)
    body = _map(await _json_body(request))
    key = _text(body, "key")
    if not ATTACHMENT_KEY.fullmatch(key or ""):
        raise _bad("key: an attachment key is a UUID or 32 hex digits")
    token = state.signer.sign({"k": "a", "key": key, "filename": _text(body, "filename"),
                               "content_type": _text(body, "content_type")})
    return JSON({"signedUrl": f"{base_url(request)}/attachment/upload/{token}", "headers": {}})


async def upload_attachment(request: Request) -> Response:
    """``PUT /attachment/upload/{token}``: an attachment's bytes (the token, not a key, allows
    it; at most ``--max-blob``), stored as ours: content addressed in the store's attachment
    area, recorded in the store under the SDK's key."""
    state = _state(request)
    payload = state.signer.verify(request.path_params["token"], "a")
    if payload is None:
        return error(403, "this upload URL is not valid (expired, or not made by this server)")
    digest = hashlib.sha256()
    incoming = os.path.join(state.area("incoming"), secrets.token_hex(16))
    try:
        size = await _receive(request, incoming, state.limits.max_blob, digest)
        sha = digest.hexdigest()
        await run_in_threadpool(_store_blob, state, incoming, sha)
        await run_in_threadpool(lambda: state.ingest.record_attachment(
            payload["key"], sha256=sha, size=size, filename=payload.get("filename"),
            content_type=payload.get("content_type"), error=None, source="reference-sdk",
            logged=time.time()))
    except (BodyError, IngestError) as exc:
        return ingest_error(exc)
    finally:
        _unlink(incoming)
    state.ingest.count("braintrust_attachments", 1)
    return JSON({})


def _store_bytes(state: BraintrustAPI, content: bytes) -> str:
    """Store ``content`` in the blob area (written aside, then renamed); its sha256."""
    sha = hashlib.sha256(content).hexdigest()
    if not os.path.exists(tracer_attachments.blob_path(state.store, sha)):
        incoming = os.path.join(state.area("incoming"), secrets.token_hex(16))
        try:
            with os.fdopen(config.open_private(incoming, os.O_WRONLY | os.O_CREAT | os.O_EXCL),
                           "wb") as f:
                f.write(content)
            _store_blob(state, incoming, sha)
        finally:
            _unlink(incoming)
    return sha


def _store_blob(state: BraintrustAPI, incoming: str, sha: str) -> None:
    """Move a received file into the blob area (once per content: a blob there stays)."""
    blob = tracer_attachments.blob_path(state.store, sha)
    if os.path.exists(blob):
        state.ingest.count("braintrust_attachments_deduplicated", 1)
        return
    tracer_attachments.make_private(os.path.dirname(blob))
    os.replace(incoming, blob)


@authenticated
async def attachment_status(request: Request, principal: Principal) -> Response:
    """``POST /attachment/status`` ``{"key", "status": {"upload_status", "error_message"?}}``:
    an upload that failed on the SDK's side is recorded as failed (one stored stays so)."""
    state = _state(request)
    body = _map(await _json_body(request))
    key = _text(body, "key") or ""
    if not ATTACHMENT_KEY.fullmatch(key):
        raise _bad("key: an attachment key is a UUID or 32 hex digits")
    status = _map(body.get("status"), "status")
    if status.get("upload_status") == "error":
        message = _text(status, "error_message", required=False) or "the upload failed"
        await run_in_threadpool(lambda: state.ingest.record_attachment(
            key, sha256=None, size=None, filename=None, content_type=None,
            error=f"upload failed: {message}", source="reference-sdk", logged=time.time()))
        state.ingest.count("braintrust_attachments_failed", 1)
    return JSON({})


# -- links --------------------------------------------------------------------------------------


async def app_page(request: Request) -> Response:
    """``GET /app/{org}/p/{project}/...``: the hosted app's page of a project or experiment
    (the URL ``summarize()`` prints), sent to the viewer's page of the same path. A page of
    the viewer, not of this API: the Guard asks for the key as for any page."""
    rest = request.path_params["rest"]
    if not rest or rest.startswith("/") or "\\" in rest or any(ord(c) < 0x20 for c in rest):
        return error(404, "not a page of this server")
    return RedirectResponse("/p/" + urllib.parse.quote(rest, safe="/"), 303)


# -- routes -------------------------------------------------------------------------------------

#: Paths of this API: the Guard leaves them to these routes, which check the Bearer key (or,
#: for uploads, the signed URL's token) themselves.
EXACT_PATHS = frozenset(("/api/apikey/login", "/api/project/register",
                         "/api/experiment/register", "/api/project", "/version", "/logs3",
                         "/logs3/overflow", "/attachment", "/attachment/status",
                         "/api/base_experiment/get_id", "/experiment-comparison2"))
PREFIXES = ("/v1/", "/logs3/overflow/", "/attachment/upload/")


def handles(path: str) -> bool:
    """Whether ``path`` is one of this API's."""
    return path in EXACT_PATHS or path.startswith(PREFIXES)


def routes() -> list[Route]:
    """The routes of this API, for ``make_app``."""
    return [
        Route("/api/apikey/login", login, methods=["POST"]),
        Route("/version", version, methods=["GET"]),
        Route("/v1/project", post_project, methods=["POST"]),
        Route("/v1/project/{project_id}", get_project, methods=["GET"]),
        Route("/api/project/register", register_project, methods=["POST"]),
        Route("/api/project", get_project_by_query, methods=["GET"]),
        Route("/v1/experiment", post_experiment, methods=["POST"]),
        Route("/v1/experiment", list_experiments, methods=["GET"]),
        Route("/v1/experiment/{experiment_id}", get_experiment, methods=["GET"]),
        Route("/v1/experiment/{experiment_id}/summarize", summarize, methods=["GET"]),
        Route("/api/experiment/register", register_experiment, methods=["POST"]),
        Route("/api/base_experiment/get_id", base_experiment, methods=["POST"]),
        Route("/experiment-comparison2", experiment_comparison, methods=["GET"]),
        Route("/logs3", logs3, methods=["POST"]),
        Route("/logs3/overflow", request_overflow, methods=["POST"]),
        Route("/logs3/overflow/{token}", upload_overflow, methods=["PUT"]),
        Route("/attachment", request_attachment, methods=["POST"]),
        Route("/attachment/upload/{token}", upload_attachment, methods=["PUT"]),
        Route("/attachment/status", attachment_status, methods=["POST"]),
        Route("/app/{org}/p/{rest:path}", app_page, methods=["GET"]),
    ]


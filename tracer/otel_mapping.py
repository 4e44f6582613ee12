"""OpenTelemetry spans as our rows' fields: the mapping of README.md's table ("OpenTelemetry"),
from a span's parts as plain Python values. No dependencies (neither OpenTelemetry nor its
protobuf messages): the in-process bridge (``tracer.integrations.opentelemetry``) calls it with
an SDK span's parts, and the OTLP receiver (``workers/otlp.py``'s ``span_row``) with the parts
it decodes from OTLP's messages (``strict``, ``parent_as_is``, ``own_end``: its differences), so
that a span reads the same whichever way it came: ids by ``tracer.w3c``; the name to
``span_attributes.name``; exception events, else an ERROR status, to ``error`` (``"<type>:
<message>\\n\\n<stacktrace>"``, as our spans write one); the GenAI semantic conventions
(``gen_ai.*``) to ``input``, ``output``, ``metadata.model`` / ``provider`` / the request's
parameters and the token metrics, span type ``llm`` (``tool``, ``task`` for tool and agent
operations); the reference's ``braintrust.*`` attributes to the fields they name (winning over
``gen_ai.*``); everything else under ``metadata.otel``: kind, status, W3C ids, trace state, the
attributes nothing took, other events, links, the resource's attributes and the scope, bounded
as there (256 attributes, keys of 256 characters, 64 events and links, strings of 16 KiB, JSON
64 levels deep), with what was dropped counted in ``metadata.otel.dropped``.

Where a process cannot do what the receiver does, it says so here: a span whose ``braintrust.*``
attribute is not what its field takes (the receiver rejects the span) keeps its row, those
attributes left in ``metadata.otel.attributes`` and the reason in ``metadata.otel.error``; a
``braintrust.parent`` naming a project by id or an experiment (the receiver looks them up in
its store) is left there too. A span that no convention types is a ``task`` when it is a server
or consumer span or has no parent, else a ``function``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from . import w3c
from .event import SPAN_TYPES

# Bounds on what one span brings (as the OTLP receiver's).
MAX_ATTRIBUTES = 256  # attributes kept per span, per resource, per event or link
MAX_KEY = 256  # characters of an attribute key (longer: dropped, counted)
MAX_META_STRING = 16 * 1024  # characters of a string kept under metadata.otel
MAX_EVENTS = 64  # events kept per span (besides the exception that becomes ``error``)
MAX_LINKS = 64
MAX_JSON_DEPTH = 64  # levels of a JSON attribute parsed into a field (braintrust.*_json ...)
MAX_PROJECT = 256  # characters of a project name taken from braintrust.parent
_SEP = "\x1f"  # wire.SEP: it separates a container key's parts, so no project name holds it

_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}
_SPAN_TYPES = frozenset(SPAN_TYPES)
_TASK_KINDS = frozenset(("server", "consumer"))


class Event(NamedTuple):
    """A span event: its name, time (epoch seconds) and attributes."""

    name: str
    time: float
    attributes: Mapping[str, Any]


class Link(NamedTuple):
    """A link to another span: its W3C ids (numbers, or OTLP's bytes as they came, of any
    length) and the link's attributes."""

    trace_id: int | bytes
    span_id: int | bytes
    attributes: Mapping[str, Any]


class MappedSpan(NamedTuple):
    """What a span becomes: its name and type (``span_attributes``), the fields of its row as
    ``Span.log`` takes them (``input``, ``output``, ``expected``, ``error``, ``scores``,
    ``tags``, ``metadata``, ``metrics`` without the times), and the project its
    ``braintrust.parent`` names (None: the caller's container). ``span_attributes``: all of
    them (the name, the type and any other ``braintrust.span_attributes`` keys); ``parent``:
    the ``braintrust.parent`` value as it came, when ``map_span`` was asked for it
    (``parent_as_is``)."""

    name: str | None
    type: str | None
    fields: dict[str, Any]
    project: str | None
    span_attributes: dict[str, Any] | None = None
    parent: str | None = None


# Names already worked out, by kind or status code (enum members, names, numbers): the enum's
# ``name`` is a slow property, asked for every span.
_kind_names: dict[object, str] = {}
_status_names: dict[object, str] = {}


def kind_name(kind: object) -> str:
    """``"server"`` for ``SpanKind.SERVER`` (OpenTelemetry's API: 1; OTLP's 2), ``"SERVER"`` or
    ``"SPAN_KIND_SERVER"``; ``"internal"`` for anything unknown."""
    try:
        return _kind_names[kind]
    except (KeyError, TypeError):
        pass
    text = _kind_name(kind)
    if len(_kind_names) < 64 and not isinstance(kind, (int, float)):  # 1 == True == 1.0
        _kind_names[kind] = text
    return text


def _kind_name(kind: object) -> str:
    name = getattr(kind, "name", kind)
    if isinstance(name, int) and not isinstance(name, bool):
        name = _KINDS.get(name)
    if not isinstance(name, str):
        return "internal"
    name = name.lower().removeprefix("span_kind_")
    return name if name in _KINDS.values() else "internal"


def status_name(code: object) -> str:
    """``"UNSET"``, ``"OK"`` or ``"ERROR"`` for a ``StatusCode``, its name or number."""
    try:
        return _status_names[code]
    except (KeyError, TypeError):
        pass
    text = _status_name(code)
    if len(_status_names) < 64 and not isinstance(code, (int, float)):
        _status_names[code] = text
    return text


def _status_name(code: object) -> str:
    name = getattr(code, "name", code)
    if isinstance(name, int) and not isinstance(name, bool):
        return _STATUS.get(name, str(name))
    if isinstance(name, str):
        return name.upper().removeprefix("STATUS_CODE_")
    return "UNSET"


def map_span(*, name: str, kind: object, trace_id: int, span_id: int,
             parent_span_id: int | None, attributes: Mapping[str, Any],
             status_code: object = "UNSET", status_message: str = "", trace_state: str = "",
             events: Iterable[Event] = (), links: Iterable[Link] = (),
             resource: Mapping[str, Any] | None = None, scope: Mapping[str, str] | None = None,
             dropped: Mapping[str, int] | None = None, strict: bool = False,
             parent_as_is: bool = False, own_end: bool = True) -> MappedSpan:
    """Map one span's parts (see the module's docstring). ``scope``: ``{"name", "version"}``;
    ``dropped``: what the span's producer (or its decoder) already dropped, by ``attributes``,
    ``events``, ``links``, ``resource_attributes``. Never raises on odd values: what cannot be
    mapped stays under ``metadata.otel``.

    The OTLP receiver's differences (``workers/otlp.py``), asked for explicitly: ``strict``, a
    ``braintrust.*`` attribute that is not what its field takes raises ValueError naming it
    (the receiver rejects the span) instead of staying in ``metadata.otel.attributes`` with
    the reason in ``metadata.otel.error``; ``parent_as_is``, any ``braintrust.parent`` value is
    taken out of the attributes into ``MappedSpan.parent`` (the receiver resolves ids in its
    store) instead of a project by name alone into ``MappedSpan.project``; ``own_end=False``,
    the span has no end time of its own, so a ``braintrust.metrics`` end is kept."""
    attrs, attrs_dropped = plain_attributes(attributes)
    metadata: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    span_attributes: dict[str, Any] = {"name": name or None}

    # gen_ai.* first: braintrust.* then replaces what both set.
    if any(key.startswith(_GENAI_PREFIXES) for key in attrs):
        span_type = _genai(attrs, fields, metadata, metrics)
        if span_type is not None:
            span_attributes["type"] = span_type
    problem = None
    parent_value = None
    if strict:  # a ValueError rejects the span: nothing to keep copies for
        parent_value = _braintrust(attrs, fields, metadata, metrics, span_attributes)
    elif any(key.startswith(_BT) for key in attrs):
        # On copies: an attribute that is not what its field takes leaves them all unmapped.
        copies = (dict(attrs), dict(fields), dict(metadata), dict(metrics),
                  dict(span_attributes))
        try:
            parent_value = _braintrust(*copies)
        except ValueError as exc:
            problem = str(exc)
        else:
            attrs, fields, metadata, metrics, span_attributes = copies
    project = None
    if parent_value is not None and not parent_as_is:
        project = _project(parent_value)
        if project is None:  # not a project by name: left for the reader
            attrs["braintrust.parent"] = parent_value
    # The span's own times win over braintrust.metrics'.
    for key in ("start", "end") if own_end else ("start",):
        metrics.pop(key, None)

    otel: dict[str, Any] = {"trace_id": f"{trace_id:032x}", "span_id": f"{span_id:016x}",
                            "kind": kind_name(kind)}
    if parent_span_id:
        otel["parent_span_id"] = f"{parent_span_id:016x}"
    if trace_state:
        otel["trace_state"] = trace_state[:MAX_META_STRING]
    status = status_name(status_code)
    if status != "UNSET" or status_message:
        otel["status"] = {"code": status, **({"message": status_message[:MAX_META_STRING]}
                                             if status_message else {})}
    error, kept_events, events_dropped = _events(events)
    if error is None and status == "ERROR":
        error = status_message or "OpenTelemetry status ERROR"
    if error is not None and "error" not in fields:
        fields["error"] = error
    if kept_events:
        otel["events"] = kept_events
    links = list(links)
    kept_links = [_link(link) for link in links[:MAX_LINKS]]
    if kept_links:
        otel["links"] = kept_links
    if attrs:
        otel["attributes"] = bounded(attrs)
    resource_attrs, resource_dropped = plain_attributes(resource or {})
    if resource_attrs:
        otel["resource"] = bounded(resource_attrs)
    if scope and scope.get("name"):
        otel["scope"] = {"name": scope["name"],
                         **({"version": scope["version"]} if scope.get("version") else {})}
    dropped = dropped or {}
    lost = {what: count for what, count in (
        ("attributes", attrs_dropped + dropped.get("attributes", 0)),
        ("events", dropped.get("events", 0) + events_dropped),
        ("links", dropped.get("links", 0) + max(0, len(links) - MAX_LINKS)),
        ("resource_attributes", resource_dropped + dropped.get("resource_attributes", 0)))
        if count}
    if lost:
        otel["dropped"] = lost
    if problem is not None:
        otel["error"] = problem
    metadata["otel"] = otel
    fields["metadata"] = metadata
    if metrics:
        fields["metrics"] = metrics
    return MappedSpan(span_attributes.get("name"), span_attributes.get("type"), fields, project,
                      span_attributes, parent_value if parent_as_is else None)


def default_type(kind: object, has_parent: bool) -> str:
    """The type of a span no convention typed: ``task`` for a server or consumer span or one
    without a parent, else ``function``."""
    return "task" if kind_name(kind) in _TASK_KINDS or not has_parent else "function"


def _project(value: str) -> str | None:
    """The project a ``braintrust.parent`` value names by name (``project_name:<name>``), if
    it is one a container can hold."""
    kind, sep, ident = value.partition(":")
    if kind != "project_name" or not ident.strip() or len(ident) > MAX_PROJECT or _SEP in ident:
        return None
    return ident


def seconds(nanoseconds: int) -> float:
    """Unix nanoseconds as the seconds our rows' times are (whole and fraction apart: as
    exact as a float of today's times can be, where ``ns / 1e9`` is off in the 7th decimal)."""
    whole, fraction = divmod(nanoseconds, 1_000_000_000)
    return whole + fraction / 1e9


# -- attribute values ---------------------------------------------------------------------------


def plain_attributes(attributes: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """Attributes as a dict of plain values (the first MAX_ATTRIBUTES, keys of at most MAX_KEY
    characters; sequences as lists, non-finite numbers as text), and how many were dropped."""
    out: dict[str, Any] = {}
    dropped = 0
    for key, value in attributes.items():
        if len(out) >= MAX_ATTRIBUTES or not isinstance(key, str) or not key \
                or len(key) > MAX_KEY:
            dropped += 1
            continue
        out[key] = _plain(value)
    return out, dropped


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def bounded(value: Any) -> Any:
    """A copy of ``value`` with its strings cut to MAX_META_STRING characters and its bytes to
    as many bytes (what is kept under ``metadata.otel``)."""
    if isinstance(value, str):
        if len(value) <= MAX_META_STRING:
            return value
        return f"{value[:MAX_META_STRING]}…[{len(value) - MAX_META_STRING} more characters]"
    if isinstance(value, bytes):
        return value[:MAX_META_STRING]
    if isinstance(value, dict):
        return {k: bounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [bounded(v) for v in value]
    return value


def _json_value(value: Any) -> tuple[bool, Any]:
    """``(True, parsed)`` if ``value`` is a string of JSON nested at most MAX_JSON_DEPTH
    levels, else ``(False, None)``."""
    if not isinstance(value, str):
        return False, None
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return False, None
    if _depth(parsed) > MAX_JSON_DEPTH:
        return False, None
    return True, parsed


def _depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar: 0), walked with a stack of our own."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            items: Iterable[Any] = item.values()
        elif isinstance(item, list):
            items = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, level) for child in items)
    return deepest


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


# -- events and links ---------------------------------------------------------------------------


def _events(events: Iterable[Event]) -> tuple[str | None, list[dict], int]:
    """The error (the last exception event, as our rows write errors), the other events (at
    most MAX_EVENTS) and how many of those were dropped."""
    error = None
    kept: list[dict] = []
    dropped = 0
    for item in events:
        if item.name == "exception":
            attrs, _ = plain_attributes(item.attributes)
            error = exception_error(attrs)
            continue
        if len(kept) < MAX_EVENTS:
            attrs, _ = plain_attributes(item.attributes)
            entry: dict[str, Any] = {"name": str(item.name)[:MAX_KEY], "time": item.time}
            if attrs:
                entry["attributes"] = bounded(attrs)
            kept.append(entry)
        else:
            dropped += 1
    return error, kept, dropped


def exception_error(attrs: Mapping[str, Any]) -> str:
    """An exception event's attributes as our rows' ``error``: ``"<type>: <message>"``, then a
    blank line and the stack trace when there is one (``tracer.span.error_of``'s shape)."""
    kind, message, stack = (attrs.get(f"exception.{name}") for name in
                            ("type", "message", "stacktrace"))
    kind = kind if isinstance(kind, str) and kind else None
    message = message if isinstance(message, str) else None
    head = f"{kind}: {message}" if kind and message else kind or message or "exception"
    if isinstance(stack, str) and stack:
        return f"{head}\n\n{stack}"
    return head


def _link(link: Link) -> dict:
    trace_id, trace_hex = _link_id(link.trace_id, 16)
    span_id, span_hex = _link_id(link.span_id, 8)
    entry: dict[str, Any] = {"trace_id": trace_hex, "span_id": span_hex}
    if trace_id and span_id:  # as our ids, to find the linked span in the store
        entry["row_span_id"], entry["row_root_span_id"] = w3c.row_ids(trace_id, span_id)
    attrs, _ = plain_attributes(link.attributes)
    if attrs:
        entry["attributes"] = bounded(attrs)
    return entry


def _link_id(value: int | bytes, size: int) -> tuple[int | None, str]:
    """A link's id as a number (None: bytes not of the id's ``size``) and as hex (bytes as
    they came)."""
    if isinstance(value, bytes):
        return (int.from_bytes(value, "big") if len(value) == size else None), value.hex()
    return value, f"{value:0{size * 2}x}"


# -- the GenAI semantic conventions -------------------------------------------------------------

_GENAI_PREFIXES = ("gen_ai.", "llm.usage.")  # what _genai reads
_PROMPT, _COMPLETION = "gen_ai.prompt.", "gen_ai.completion."
# Token counts: the current names, then the older ones, then OpenLLMetry's (``llm.usage.*``).
_PROMPT_TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                  "llm.usage.prompt_tokens")
_COMPLETION_TOKENS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                      "llm.usage.completion_tokens")
_TOTAL_TOKENS = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens")
# Operations (gen_ai.operation.name) whose spans are not LLM calls.
_GENAI_TYPES = {"execute_tool": "tool", "invoke_agent": "task", "create_agent": "task"}


def _genai(attrs: dict, fields: dict, metadata: dict, metrics: dict) -> str | None:
    """Take the GenAI attributes out of ``attrs`` into the row's fields; the span type they
    make (``llm``, or ``tool``/``task`` for tool and agent operations), or None if none."""
    seen = False
    model = attrs.pop("gen_ai.request.model", None)
    response_model = attrs.pop("gen_ai.response.model", None)
    if isinstance(model, str) or isinstance(response_model, str):
        metadata["model"] = model if isinstance(model, str) else response_model
        seen = True
    for name in ("gen_ai.system", "gen_ai.provider.name"):
        provider = attrs.pop(name, None)
        if isinstance(provider, str) and "provider" not in metadata:
            metadata["provider"] = provider
            seen = True
    for name in [k for k in attrs if k.startswith("gen_ai.request.")]:
        metadata[name[len("gen_ai.request."):]] = bounded(attrs.pop(name))
        seen = True

    inp = _messages_of(attrs, "gen_ai.input.messages", _PROMPT, "gen_ai.prompt")
    system = attrs.pop("gen_ai.system_instructions", None)
    if system is not None and isinstance(inp, list):
        ok, parsed = _json_value(system)
        parts = parsed if ok else system
        inp = [{"role": "system", "content": _text_of(parts)}, *inp]
    if inp is not None:
        fields["input"] = inp
        seen = True

    out = _messages_of(attrs, "gen_ai.output.messages", _COMPLETION, "gen_ai.completion")
    if out is not None:
        fields["output"] = out
        seen = True

    prompt_tokens = _first_number(attrs, _PROMPT_TOKENS)
    completion_tokens = _first_number(attrs, _COMPLETION_TOKENS)
    total = _first_number(attrs, _TOTAL_TOKENS)
    if prompt_tokens is not None:
        metrics["prompt_tokens"] = prompt_tokens
    if completion_tokens is not None:
        metrics["completion_tokens"] = completion_tokens
    if total is None and (prompt_tokens is not None or completion_tokens is not None):
        total = (prompt_tokens or 0) + (completion_tokens or 0)
    if total is not None:
        metrics["tokens"] = total
        seen = True

    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str) and operation in _GENAI_TYPES:
        return _GENAI_TYPES[operation]
    return "llm" if seen else None


def _first_number(attrs: dict, names: tuple[str, ...]) -> int | float | None:
    found = None
    for name in names:
        if name in attrs and _number(attrs[name]):
            value = attrs.pop(name)
            if found is None:
                found = value
    return found


def _messages_of(attrs: dict, name: str, prefix: str, flat: str) -> Any:
    """A span's input or output messages, taken out of ``attrs``: the structured attribute
    (``gen_ai.input.messages``), else the indexed form (``gen_ai.prompt.0.role`` ...), else the
    flat attribute (``gen_ai.prompt``: JSON of a list or an object, else its text)."""
    messages = _messages_attribute(attrs, name)
    indexed = _indexed_messages(attrs, prefix)
    text = attrs.pop(flat, None)
    if messages is None:
        messages = indexed
    if messages is None and text is not None:
        ok, parsed = _json_value(text)
        messages = parsed if ok and isinstance(parsed, (list, dict)) else text
    return messages


def _messages_attribute(attrs: dict, name: str) -> Any:
    """``gen_ai.input.messages`` / ``gen_ai.output.messages`` (a JSON string, or already a
    structured value) as chat messages, or None if absent or not messages."""
    if name not in attrs:
        return None
    value = attrs[name]
    if isinstance(value, str):
        ok, value = _json_value(value)
        if not ok:
            return None  # left in otel.attributes as it came
    if not isinstance(value, list):
        return None
    del attrs[name]
    return [_message(m) for m in value]


def _message(message: Any) -> Any:
    """A GenAI semantic-conventions message (``role`` and typed ``parts``) as a chat message
    (``role`` and ``content``, ``tool_calls``, ``tool_call_id``), as our llm rows and the
    viewer's conversation have them. A message in another shape is kept as it is."""
    if not isinstance(message, dict) or not isinstance(message.get("parts"), list):
        return message
    out: dict[str, Any] = {k: v for k, v in message.items() if k != "parts"}
    texts: list[str] = []
    calls: list[dict] = []
    others: list[Any] = []
    for part in message["parts"]:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("content"), str):
            texts.append(part["content"])
        elif kind == "tool_call":
            arguments = part.get("arguments")
            calls.append({"id": part.get("id"), "type": "function",
                          "function": {"name": part.get("name"),
                                       "arguments": arguments if isinstance(arguments, str)
                                       else json.dumps(arguments)}})
        elif kind == "tool_call_response":
            out["role"] = message.get("role", "tool")
            out["tool_call_id"] = part.get("id")
            response = part.get("response")
            texts.append(response if isinstance(response, str) else json.dumps(response))
        else:
            others.append(part)
    if others:
        out["content"] = [*({"type": "text", "text": t} for t in texts), *others]
    else:
        out["content"] = "".join(texts) if texts or not calls else None
    if calls:
        out["tool_calls"] = calls
    return out


def _text_of(value: Any) -> Any:
    """System instructions (a string, or a list of text parts) as a message's content."""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       for p in value):
        return "".join(str(p.get("content", "")) for p in value)
    return value


def _indexed_messages(attrs: dict, prefix: str) -> list | None:
    """The indexed form (``gen_ai.prompt.0.role``, ``gen_ai.prompt.0.content``,
    ``gen_ai.prompt.1.tool_calls.0.name`` ...) as a list of messages, in index order; the
    attributes taken out of ``attrs``. None if there are none."""
    names = [k for k in attrs if k.startswith(prefix)]
    if not names:
        return None
    messages: dict[int, dict] = {}
    for name in names:
        index, _, path = name[len(prefix):].partition(".")
        if not index.isdigit() or not path or len(index) > 6:
            continue  # not the indexed form: left in otel.attributes
        target = messages.setdefault(int(index), {})
        parts = path.split(".")
        for part in parts[:-1]:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = target[part] = {}
            target = nxt
        target[parts[-1]] = attrs.pop(name)
    return [_lists(messages[i]) for i in sorted(messages)] or None


def _lists(value: Any) -> Any:
    """Dicts whose keys are all indexes (``{"0": ..., "1": ...}``) as lists, all the way down."""
    if not isinstance(value, dict):
        return value
    items = {k: _lists(v) for k, v in value.items()}
    if items and all(k.isdigit() and len(k) <= 6 for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


# -- the reference's braintrust.* attributes ----------------------------------------------------

_BT = "braintrust."
_BT_DICTS = ("metadata", "metrics", "scores", "span_attributes")  # fields that are maps


def _braintrust(attrs: dict, fields: dict, metadata: dict, metrics: dict,
                span_attributes: dict) -> str | None:
    """Take the ``braintrust.*`` attributes out of ``attrs`` into the row's fields; the
    ``braintrust.parent`` value, if any. ValueError naming an attribute that is not what its
    field needs; a ``*_json`` attribute that is not JSON stays in ``otel.attributes`` (as the
    reference keeps it in metadata)."""
    names = [k for k in attrs if k.startswith(_BT)]
    if not names:
        return None
    parent = None
    maps: dict[str, dict] = {"metadata": metadata, "metrics": metrics, "scores": {},
                             "span_attributes": span_attributes}
    for name in sorted(names):  # the whole map (braintrust.metadata) before its flat keys
        value = attrs[name]
        rest = name[len(_BT):]
        if rest == "parent":
            if not isinstance(value, str):
                raise ValueError(f"attribute {name} must be a string")
            parent = value
        elif rest in ("input", "output", "expected"):
            fields[rest] = value
        elif rest in ("input_json", "output_json", "expected_json"):
            ok, parsed = _json_value(value)
            if not ok:
                continue  # stays in otel.attributes
            fields[rest[:-len("_json")]] = parsed
        elif rest in _BT_DICTS or (rest.endswith("_json") and rest[:-5] in _BT_DICTS):
            field_name = rest[:-5] if rest.endswith("_json") else rest
            if isinstance(value, str):
                ok, value = _json_value(value)
                if not ok:
                    raise ValueError(f"attribute {name} is not a JSON object")
            if not isinstance(value, dict):
                raise ValueError(f"attribute {name} must be a map")
            maps[field_name].update(value)
        elif rest == "tags" or rest == "tags_json":
            if isinstance(value, str):
                ok, parsed = _json_value(value)
                value = parsed if ok and isinstance(parsed, list) else [value]
            if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                raise ValueError(f"attribute {name} must be a list of strings")
            fields["tags"] = value
        elif rest.partition(".")[0] in _BT_DICTS and rest.partition(".")[2]:
            head, _, key = rest.partition(".")  # braintrust.metadata.<key> and the like
            maps[head][key] = value
        else:
            continue  # not one of the reference's: stays in otel.attributes
        del attrs[name]
    if maps["scores"]:
        fields["scores"] = maps["scores"]
    kind = span_attributes.get("type")
    if kind is not None and (not isinstance(kind, str) or kind not in _SPAN_TYPES):
        raise ValueError(f"braintrust.span_attributes type {kind!r:.40} is not one of "
                         f"{', '.join(SPAN_TYPES)}")
    name_value = span_attributes.get("name")
    if name_value is not None and not isinstance(name_value, str):
        raise ValueError("braintrust.span_attributes name must be a string")
    for key, number in metrics.items():
        if not _number(number):
            raise ValueError(f"braintrust.metrics {key!r:.40} must be a number")
    for key, score in maps["scores"].items():
        if score is not None and not (_number(score) and 0 <= score <= 1):
            raise ValueError(f"braintrust.scores {key!r:.40} must be a number in [0, 1]")
    return parent

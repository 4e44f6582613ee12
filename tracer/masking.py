"""The masking function: what users log is passed through it before it leaves the process.

``set_masking_function(fn)`` (the reference's ``braintrust.set_masking_function``) sets one
function for the whole process: every logger, experiment and span of it. Masking happens where
records are packed for the aggregator (``serialize.pack_records``, on the recorder's flusher
thread), never on the caller's thread: the caller's cost is the same with or without a mask.
Without one the flusher pays one check per frame and nothing per record.

With one, each record's user fields are unpacked (its snapshots too) and ``fn`` is called once
per field present, in this order: ``input`` (for ``@traced``, the bound arguments, as the row
will show them), ``output``, ``expected``, ``error``, ``metadata``, ``scores``, ``metrics``;
``tags``, names, ids and the span's own times are not masked. The record is then packed again,
each masked value snapshotted as ``serialize`` snapshots logged values (so what cannot be
serialised gets the usual readable stand-ins). The value ``fn`` sees is what the row will hold:
the logged value after serialisation (lists as lists, datetimes as ISO strings, attachments as
their reference dicts).

A mask that fails never loses the record nor stops the flusher, and the error never carries
the value (it could be the very data the mask was to hide), as in the reference: the field
becomes ``"ERROR: Failed to mask field '<field>' - <exception type>"``; ``metadata`` becomes
``{"error": <that string>}``; ``scores`` and ``metrics`` are dropped and the string goes into
the record's ``error`` (after any error already there, joined by ``"; "``). A result the
aggregator would refuse (``scores`` that are not numbers in [0, 1], ``metrics`` that are not
numbers, ``metadata`` that is not a dict of string keys) counts as a failure, named by what
is wrong with it.

Records are masked one by one, as they are sent, whereas the reference masks rows after
merging what a batch holds for each: ``fn`` may see part of a row (one ``span.log``'s
``metadata``), and a failure's message stays in the record where it happened.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from typing import Any

import msgpack

from . import serialize, wire

# The fields the mask is applied to, in order: ``error`` before ``scores`` and ``metrics``,
# whose failures are added to it. The reference's list, with ``error`` added (an exception's
# message often quotes the data it failed on).
FIELDS = ("input", "output", "expected", "error", "metadata", "scores", "metrics")
_DROPPED_ON_FAILURE = frozenset(("scores", "metrics"))

# Where each record kind carries its fields and its input slot (see tracer.wire).
_SLOTS: dict[int, tuple[int, int | None]] = {
    wire.SPAN_END: (wire.SPAN_END_FIELDS.index("fields"), wire.SPAN_END_FIELDS.index("input")),
    wire.SPAN_OPEN: (wire.SPAN_OPEN_FIELDS.index("fields"),
                     wire.SPAN_OPEN_FIELDS.index("input")),
    wire.SPAN_LOG: (wire.SPAN_LOG_FIELDS.index("fields"), None),
    wire.UPDATE: (wire.UPDATE_FIELDS.index("fields"), None),
}

_function: Callable[[Any], Any] | None = None


def set_masking_function(masking_function: Callable[[Any], Any] | None) -> None:
    """Mask everything this process logs from now on with ``masking_function``; ``None`` turns
    masking off.

    The function takes one field's value (a JSON-like value: dicts, lists, strings, numbers...)
    and returns the value to store instead. It applies to every logger and experiment of the
    process, to ``input``, ``output``, ``expected``, ``error``, ``metadata``, ``scores`` and
    ``metrics`` (not ``tags``), and runs on the recorder's background thread when records are
    sent (at most ``0.1`` s after they are logged, or at ``flush()``): so records logged just
    before a change are sent under the new setting, as in the reference (``tracer.flush()``
    first to have them sent under the old one). It may run on several threads at once (one per
    recorder): keep it a pure function. An exception it raises, or a result that cannot be
    stored in that field, replaces the field with an error string naming the exception's type
    (never its message), as in the reference; the record is still sent.

    Processes forked after the call inherit it. Workers of ``TracedPool`` and
    ``TracedProcessPoolExecutor`` are given it with each task when it can be pickled (a
    module-level function), whatever their start method; any other spawn or forkserver child
    starts without one and must call ``set_masking_function`` itself.

    Raises TypeError if ``masking_function`` is neither callable nor None.
    """
    if masking_function is not None and not callable(masking_function):
        raise TypeError("set_masking_function: masking_function must be a callable or None, "
                        f"got {type(masking_function).__name__}")
    global _function
    _function = masking_function
    # The hook stays off while no function is set: packing then costs one check per frame.
    serialize.set_masker(None if masking_function is None else mask_records)


# -- carrying the function to pool workers --------------------------------------------------

_portable: tuple[Callable[[Any], Any] | None, bool] = (None, False)  # (function, picklable)
_warned_unpicklable = False


def for_workers() -> Callable[[Any], Any] | None:
    """The masking function to hand to a pool worker with a task: the one set, when it can be
    pickled (looked at once per function); None when none is set or it cannot be (warned about
    once), and the worker keeps its own."""
    global _portable, _warned_unpicklable
    fn = _function
    if fn is None:
        return None
    checked, picklable = _portable
    if checked is not fn:
        try:
            pickle.dumps(fn)
            picklable = True
        except Exception:
            picklable = False
        _portable = (fn, picklable)
        if not picklable and not _warned_unpicklable:
            _warned_unpicklable = True
            print(f"tracer: the masking function {getattr(fn, '__qualname__', fn)!r} cannot be "
                  "pickled: pool workers started with spawn or forkserver do not get it; define "
                  "it at module level, or call set_masking_function in those workers",
                  file=sys.stderr)
    return fn if picklable else None


def adopt(fn: Callable[[Any], Any]) -> None:
    """In a pool worker: mask with ``fn``, the function the task's submitter masks with."""
    if fn is not _function:
        set_masking_function(fn)


# -- masking records -------------------------------------------------------------------------


def mask_records(records: list) -> list:
    """``records`` (tuples and packed records, as the recorder buffers them) with their user
    fields masked: each record that carries any comes back packed again; the others as they
    were. Never raises."""
    fn = _function
    if fn is None:  # turned off since the frame was taken
        return records
    masked = []
    for record in records:
        try:
            masked.append(_mask_record(record, fn))
        except Exception as exc:
            # Cannot happen: our own packer made the record (the mask's own failures are
            # handled field by field). Unmasked it must not leave, nor may an exception here
            # lose the rest of the frame: this one record is not sent, and that is said.
            print(f"tracer: a record could not be masked ({type(exc).__name__}); it is not "
                  "sent", file=sys.stderr)
            masked.append(b"")
    return masked


def _mask_record(record: tuple | bytes, fn: Callable[[Any], Any]) -> tuple | bytes:
    values = list(_unpack(record)) if type(record) is bytes else list(record)
    slots = _SLOTS.get(values[0]) if values else None
    if slots is None:
        return record
    fields_at, input_at = slots
    fields = values[fields_at]
    has_input = input_at is not None and values[input_at] is not None
    if not fields and not has_input:
        return record  # an end or an update with nothing logged: nothing to mask
    if input_at is not None and has_input:
        values[input_at] = (None, _masked_input(values[input_at], fn))
    if fields:
        values[fields_at] = _masked_fields(fields, fn)
    return serialize.pack(tuple(values))


def _masked_input(slot: Any, fn: Callable[[Any], Any]) -> object:
    """The input of a SPAN_END/SPAN_OPEN record, as the row will show it, masked."""
    try:
        names, value = slot
        if names is None:
            inp = _opened(value)
        else:  # @traced: (args, kwargs) to bind to the parameter names
            args, kwargs = _opened(value)
            inp = wire.unpack_input((names, (list(args), kwargs)))
    except Exception:  # cannot happen for our own records: hide it rather than send it
        return _failure("input", "the input could not be read")
    return _apply(fn, "input", inp)[1]


def _masked_fields(fields: dict, fn: Callable[[Any], Any]) -> dict:
    """A copy of a record's fields with each of ``FIELDS`` masked (see the module's doc)."""
    out = dict(fields)
    for name in FIELDS:
        if name not in fields:
            continue
        ok, masked = _apply(fn, name, _opened(fields[name]))
        if ok or name not in _DROPPED_ON_FAILURE:
            out[name] = masked
            continue
        del out[name]
        error = out.get("error")
        out["error"] = masked if error is None else f"{_opened(error)}; {masked}"
    return out


def _apply(fn: Callable[[Any], Any], name: str, value: object) -> tuple[bool, object]:
    """``(True, fn(value) snapshotted)``, or ``(False, what the field gets instead)``."""
    try:
        masked = fn(value)
    except BaseException as exc:  # a SystemExit must not end the flusher either
        return False, _failure(name, type(exc).__name__)
    problem = _refused(name, masked)
    if problem is not None:
        return False, _failure(name, problem)
    return True, serialize.snapshot(masked)


def _failure(name: str, what: str) -> object:
    """What a field gets when masking it failed: the reference's error string."""
    message = f"ERROR: Failed to mask field '{name}' - {what}"
    return {"error": message} if name == "metadata" else message


def _refused(name: str, value: object) -> str | None:
    """What the aggregator would refuse in a masked ``metadata``, ``scores`` or ``metrics``
    (it checks every record as ``tracer.event`` checks the API's arguments), or None. Never
    quotes the value."""
    if value is None or name not in ("metadata", "scores", "metrics"):
        return None
    if not isinstance(value, dict):
        return f"the masking function returned {type(value).__name__}, not a dict"
    for key, item in value.items():
        if not isinstance(key, str):
            return "the masking function returned a key that is not a string"
        if item is None or name == "metadata":
            continue
        if isinstance(item, bool) or not isinstance(item, (int, float)) or (
                isinstance(item, int) and not -(2**63) <= item < 2**64):
            return "the masking function returned a value that is not a number"
        if name == "scores" and not 0 <= item <= 1:  # NaN fails the comparison too
            return "the masking function returned a score outside [0, 1]"
    return None


# -- opening values ----------------------------------------------------------------------------


def _snapshot_hook(use_list: bool) -> Callable[[int, bytes], object]:
    def hook(code: int, data: bytes) -> object:
        if code == wire.SNAPSHOT:
            return msgpack.unpackb(data, strict_map_key=False, use_list=use_list,
                                   ext_hook=hook)
        return msgpack.ExtType(code, data)
    return hook


# Lists come back as lists, as the mask would see them in the reference (which masks the
# logged values themselves): a mask that looks for lists must find them. A value with a list
# as a dict key (a tuple key, logged) cannot be opened so: it is opened with tuples.
_as_lists = _snapshot_hook(use_list=True)
_as_tuples = _snapshot_hook(use_list=False)


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, strict_map_key=False, use_list=True, ext_hook=_as_lists)
    except TypeError:  # unhashable: an array as a map key
        return msgpack.unpackb(data, strict_map_key=False, use_list=False, ext_hook=_as_tuples)


def _opened(value: Any) -> Any:
    """A value of a record as the row will hold it: a snapshot unpacked, a tuple a list."""
    if type(value) is msgpack.ExtType and value.code == wire.SNAPSHOT:
        return _unpack(value.data)
    if type(value) is tuple:
        return list(value)
    return value

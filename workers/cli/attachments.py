"""The command line's attachment parts: ``tracer attachment get``, ``tracer export
--with-attachments DIR`` and the attachment lines of ``tracer show``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterable, Iterator

from tracer import attachments

from ..attachments import REFERENCE_KEY, references, status
from ..store import StoreReader, open_store


def cmd_attachment(args: argparse.Namespace) -> int:
    """``tracer attachment get``: 0, or 1 if the attachment is not stored."""
    if not REFERENCE_KEY.fullmatch(args.key):
        raise ValueError(f"not an attachment key: {args.key!r} (expected 32 hex digits, or a UUID)")
    path = args.store
    with open_store(path, readonly=True) as store:
        recorded = store.attachments([args.key]).get(args.key)
    state = status(path, {"type": attachments.BRAINTRUST_ATTACHMENT, "key": args.key}, recorded)
    if "path" not in state:
        why = state.get("error_message") or "it is still being stored; try again in a moment"
        if recorded is None and state["upload_status"] == "missing":
            why = f"no attachment with this key in {store.location}"
        print(f"tracer attachment get: {args.key}: {why}", file=sys.stderr)
        return 1
    if args.output:
        shutil.copyfile(state["path"], args.output)
    else:
        with open(state["path"], "rb") as blob:
            shutil.copyfileobj(blob, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    return 0


def saving(store: StoreReader, rows: Iterable[dict], directory: str) -> Iterator[dict]:
    """``rows`` as they are exported, each attachment they refer to written to ``directory``
    and each reference given its ``upload_status`` (and ``error_message``)."""
    os.makedirs(directory, exist_ok=True)
    written: set[str] = set()
    problems = 0
    for row in rows:
        refs = [ref for ref in references(row)
                if ref.get("type") == attachments.BRAINTRUST_ATTACHMENT]
        recorded = store.attachments([ref["key"] for ref in refs
                                      if isinstance(ref.get("key"), str)])
        for ref in refs:
            state = status(store.location, ref, _recorded(recorded, ref))
            ref["upload_status"] = state["upload_status"]
            if state.get("error_message"):
                ref["error_message"] = state["error_message"]
            if "path" not in state:
                problems += 1
            elif ref["key"] not in written:
                shutil.copyfile(state["path"], os.path.join(directory, file_name(ref)))
                written.add(ref["key"])
        yield row
    note = f"; {problems} references to attachments not stored (see their upload_status)" \
        if problems else ""
    print(f"tracer export: wrote {len(written)} attachments to {directory}{note}",
          file=sys.stderr)


def _recorded(recorded: dict[str, dict], ref: dict) -> dict | None:
    """What the store recorded about the attachment ``ref`` refers to (None: nothing)."""
    key = ref.get("key")
    return recorded.get(key) if isinstance(key, str) else None


def file_name(ref: dict) -> str:
    """``<key>-<filename>``, the filename reduced to a safe base name."""
    name = os.path.basename(str(ref.get("filename") or "").replace("\\", "/")).replace("\0", "")
    if name in ("", ".", ".."):
        name = "attachment"
    return f"{ref['key']}-{name}"


def span_lines(store: StoreReader, row: dict) -> list[str]:
    """One line per attachment of a span, for ``tracer show``."""
    refs = list(references(row))
    if not refs:
        return []
    recorded = store.attachments([ref["key"] for ref in refs if isinstance(ref.get("key"), str)])
    lines = []
    for ref in refs:
        state = status(store.location, ref, _recorded(recorded, ref))
        text = f"attachment {ref.get('filename')} ({ref.get('content_type')}"
        size = state.get("size")
        text += f", {_size(size)})" if isinstance(size, int) else ")"
        if state["upload_status"] == "external":
            text += f" external {ref.get('url')}"
        else:
            text += f" {state['upload_status']}"
            if state.get("error_message"):
                text += f": {state['error_message']}"
            text += f"  key {ref.get('key')}"
        lines.append(text)
    return lines


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 2**20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 2**20:.1f} MiB"

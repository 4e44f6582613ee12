// One trace: its header, the span tree with its timeline, and the selected span's details.
// The skeleton (GET /api/traces/{root}) carries every span's name, type, times and flags; a
// span's body is fetched only when it is selected.

import { api, ApiError } from "./api.js";
import { h, link, notice } from "./dom.js";
import * as fmt from "./format.js";
import { glyph, typeIcon } from "./icons.js";
import { SpanDetail } from "./span_detail.js";
import { TraceTree } from "./trace_tree.js";

export class TraceView {
  /**
   * backHref: the list this trace was opened from; onSpan(span_id): the selection changed (the
   * page puts it in the URL).
   */
  constructor({ backHref, backLabel, onSpan }) {
    this.backHref = backHref;
    this.backLabel = backLabel;
    this.onSpan = onSpan;
    this.el = h("section", { class: "trace-view", "aria-label": "Trace" });
    this.rootId = null;
    this.tree = null;
    this.data = null;
    this.controller = null;
    this.detail = new SpanDetail({ onSelect: (spanId) => this.select(spanId, true) });
  }

  /** Show trace `rootId` with span `spanId` selected (the root when none is given). */
  async open(rootId, spanId) {
    if (rootId === this.rootId && this.data) {
      const root = rootOf(this.data.spans || [], rootId);
      this.select(spanId || (root ? root.span_id : rootId), false);
      return;
    }
    this.destroyTree();
    this.rootId = rootId;
    this.data = null;
    if (this.controller) this.controller.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.el.replaceChildren(h("p", { class: "loading", role: "status" }, "Loading trace…"));
    let data;
    try {
      data = await api.trace(rootId, { signal: controller.signal });
    } catch (err) {
      if (err.name === "AbortError") return;
      this.el.replaceChildren(notFoundOr(err, this.backHref, this.backLabel, "Trace", rootId));
      return;
    }
    if (controller.signal.aborted) return;
    this.data = data;
    this.render(spanId);
  }

  render(spanId) {
    const spans = this.data.spans || [];
    const root = rootOf(spans, this.data.root_span_id);
    this.parentNames = new Map();
    this.tree = new TraceTree(spans, {
      onSelect: (idx) => this.showSpan(spans[idx], true),
    });
    const errors = spans.reduce((n, s) => n + (s.error ? 1 : 0), 0);
    const running = spans.some((s) => s.running);
    let end = -Infinity;
    for (const s of spans) if (Number.isFinite(s.end) && s.end > end) end = s.end;
    const container = this.data.container || {};
    const where = container.kind === "experiment"
      ? `experiment ${container.experiment_name || container.experiment_id}`
      : `${container.project || ""} logs`;
    const head = h("header", { class: "trace-head" },
      h("a", { class: "button small back", href: this.backHref, "data-link": true },
        glyph("back"), this.backLabel),
      h("h1", {}, root ? typeIcon(root.type) : null, h("span", { text: root ? root.name : "trace" })),
      h("dl", { class: "facts inline" },
        fact("In", where),
        fact("Started", root ? fmt.time(root.start) : ""),
        fact("Duration", running ? "running" : root && Number.isFinite(end) ? fmt.duration(end - root.start) : ""),
        fact("Spans", fmt.number(spans.length)),
        errors ? fact("Errors", fmt.number(errors)) : null),
      h("div", { class: "tree-actions" },
        h("button", { type: "button", class: "small", onclick: () => this.tree.setAll(false) }, "Expand all"),
        h("button", { type: "button", class: "small", onclick: () => this.tree.setAll(true) }, "Collapse all")));
    this.detail.clear();
    this.el.replaceChildren(head, h("div", { class: "trace-body" }, this.tree.el, this.detail.el));
    this.tree.render();
    performance.mark("trace-rendered"); // the benchmark (scripts/bench/viewer.py) reads it
    const wanted = spanId || (root ? root.span_id : this.data.root_span_id);
    if (!this.select(wanted, false) && spanId) {
      this.detail.el.replaceChildren(notice(`Span not found: ${spanId} is not a span of this trace.`, "error"));
    }
  }

  /** Select a span by id; `fromUser` updates the URL. */
  select(spanId, fromUser) {
    if (!this.tree) return false;
    if (!this.tree.selectSpan(spanId)) return false;
    const idx = this.tree.index.get(spanId);
    this.showSpan(this.data.spans[idx], fromUser);
    return true;
  }

  showSpan(span, fromUser) {
    const names = new Map();
    for (const p of span.parents || []) names.set(p, this.tree.nameOf(p));
    this.detail.show(this.rootId, span.span_id, span, names);
    if (fromUser && this.onSpan) this.onSpan(span.span_id);
  }

  destroyTree() {
    if (this.tree) this.tree.destroy();
    this.tree = null;
  }

  destroy() {
    if (this.controller) this.controller.abort();
    this.destroyTree();
  }
}

function fact(label, value) {
  if (value === "" || value === null || value === undefined) return null;
  return h("div", {}, h("dt", { text: label }), h("dd", { text: value }));
}

/** A "not found" page (404), or the error. */
export function notFoundOr(err, backHref, backLabel, what, id) {
  const back = backHref ? link(backHref, backLabel) : link("/", "Projects");
  if (err instanceof ApiError && err.status === 404) {
    return h("div", { class: "not-found" },
      h("h1", { text: `${what} not found` }),
      h("p", {}, `No ${what.toLowerCase()} `, h("code", { text: id }), " is stored here."),
      h("p", {}, back));
  }
  return h("div", { class: "not-found" },
    h("h1", { text: `Could not load the ${what.toLowerCase()}` }),
    notice(err.message, "error"), h("p", {}, back));
}

/**
 * The root of a trace's spans (in start order): the span whose id is the trace's
 * root_span_id; else, for a trace begun elsewhere (OpenTelemetry: docs/interop.md), the first
 * span with no parents; else the first span.
 */
export function rootOf(spans, rootSpanId) {
  const byId = spans.find((s) => s.span_id === rootSpanId);
  if (byId) return byId;
  return spans.find((s) => !s.parents || s.parents.length === 0) || spans[0];
}

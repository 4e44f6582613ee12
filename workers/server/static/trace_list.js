// A list of traces (a project's logs, an experiment's rows): one line per trace, newest first;
// filters kept in the URL; "Load older" pages back with the `before` cursor; the live tail asks
// every 2 s for traces newer than the newest shown (`after`) and puts them on top.

import { ApiError } from "./api.js";
import { h, notice } from "./dom.js";
import * as fmt from "./format.js";
import { glyph, typeIcon } from "./icons.js";

const FILTERS = ["since", "until", "name", "type", "errors", "score", "meta", "q"];
const SPAN_TYPES = ["llm", "score", "function", "eval", "task", "tool"];
const TAIL_MS = 2000;
const PAGE_SIZE = 50;

/** The filters of a URL query, as API parameters. */
export function filtersOf(query) {
  const params = {};
  for (const key of FILTERS) {
    const values = query.getAll(key).filter((v) => v !== "");
    if (values.length) params[key] = key === "meta" ? values : values[0];
  }
  return params;
}

export class TraceList {
  /**
   * fetchPage(params, {signal}) -> the API's {traces, next, newest}; traceHref(root_span_id) ->
   * the URL that opens a trace; onFilters(params): the filters changed (the page puts them in
   * the URL).
   */
  constructor({ fetchPage, traceHref, onFilters, label }) {
    this.fetchPage = fetchPage;
    this.traceHref = traceHref;
    this.onFilters = onFilters;
    this.filters = {};
    this.next = null;
    this.newest = null;
    this.seen = new Set();
    this.timer = 0;
    this.tailing = true;
    this.paused = false;
    this.controller = null;
    this.form = this.buildForm();
    this.tbody = h("tbody", {});
    this.status = h("p", { class: "list-status", role: "status" });
    this.olderButton = h("button", { type: "button", hidden: true, onclick: () => this.loadOlder() }, "Load older traces");
    this.tailBox = h("input", { type: "checkbox", id: "live-tail", checked: true });
    this.tailBox.addEventListener("change", () => this.setTail(this.tailBox.checked));
    this.el = h("section", { class: "trace-list", "aria-label": label },
      this.form,
      h("div", { class: "list-toolbar" },
        h("label", { class: "toggle-label", for: "live-tail" }, this.tailBox, "Live tail"),
        this.status),
      h("table", { class: "traces", "aria-label": "Traces" },
        h("thead", {}, h("tr", {},
          ["Name", "Started", "Duration", "Spans", "Errors", "Scores", "Tokens"].map((c) =>
            h("th", { scope: "col", text: c })))),
        this.tbody),
      h("div", { class: "list-footer" }, this.olderButton));
  }

  buildForm() {
    const field = (label, input) => h("label", { class: "filter" }, h("span", { text: label }), input);
    this.inputs = {
      since: h("input", { type: "datetime-local", name: "since" }),
      until: h("input", { type: "datetime-local", name: "until" }),
      name: h("input", { type: "search", name: "name", placeholder: "root span name or prefix" }),
      type: h("select", { name: "type" }, h("option", { value: "", text: "any" }),
        SPAN_TYPES.map((t) => h("option", { value: t, text: t }))),
      errors: h("input", { type: "checkbox", name: "errors" }),
      scoreName: h("input", { type: "text", name: "score_name", placeholder: "score", size: 10 }),
      scoreOp: h("select", { name: "score_op", "aria-label": "Score comparison" },
        h("option", { value: "gt", text: "above" }), h("option", { value: "lt", text: "below" })),
      scoreValue: h("input", {
        type: "number", name: "score_value", step: "any", min: 0, max: 1, placeholder: "0.5",
        "aria-label": "Score threshold", class: "narrow",
      }),
      meta: h("input", { type: "text", name: "meta", placeholder: "key=value; key2=value2" }),
      q: h("input", { type: "search", name: "q", placeholder: "text in any input or output" }),
    };
    const i = this.inputs;
    const form = h("form", { class: "filters", role: "search", "aria-label": "Filter traces" },
      field("Search", i.q),
      field("Name", i.name),
      field("Span type", i.type),
      h("label", { class: "filter filter-check" }, i.errors, h("span", { text: "Errors only" })),
      h("div", { class: "filter", role: "group", "aria-label": "Score" }, h("span", { text: "Score" }),
        h("span", { class: "score-filter" },
          h("label", {}, h("span", { class: "sr-only", text: "Score name" }), i.scoreName), i.scoreOp, i.scoreValue)),
      field("Metadata", i.meta),
      field("Since", i.since),
      field("Until", i.until),
      h("div", { class: "filter-actions" },
        h("button", { type: "submit", class: "primary" }, "Apply filters"),
        h("button", { type: "button", onclick: () => this.clearFilters() }, "Clear")));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.onFilters(this.readForm());
    });
    return form;
  }

  readForm() {
    const i = this.inputs;
    const params = {};
    const since = fmt.fromLocalInput(i.since.value);
    const until = fmt.fromLocalInput(i.until.value);
    if (since !== null) params.since = since;
    if (until !== null) params.until = until;
    if (i.name.value.trim()) params.name = i.name.value.trim();
    if (i.type.value) params.type = i.type.value;
    if (i.errors.checked) params.errors = 1;
    if (i.scoreName.value.trim() && i.scoreValue.value !== "") {
      params.score = `${i.scoreName.value.trim()}:${i.scoreOp.value}:${i.scoreValue.value}`;
    }
    const metas = i.meta.value.split(";").map((m) => m.trim()).filter((m) => m.includes("="));
    if (metas.length) params.meta = metas;
    if (i.q.value.trim()) params.q = i.q.value.trim();
    return params;
  }

  fillForm(params) {
    const i = this.inputs;
    i.since.value = fmt.toLocalInput(params.since);
    i.until.value = fmt.toLocalInput(params.until);
    i.name.value = params.name || "";
    i.type.value = params.type || "";
    i.errors.checked = params.errors === "1" || params.errors === 1;
    const [sn, op, sv] = (params.score || "").split(":");
    i.scoreName.value = params.score ? sn : "";
    i.scoreOp.value = op === "lt" ? "lt" : "gt";
    i.scoreValue.value = params.score ? sv : "";
    i.meta.value = (params.meta || []).join("; ");
    i.q.value = params.q || "";
  }

  clearFilters() {
    this.onFilters({});
  }

  /** Load the first page for `filters` (from the URL). */
  async load(filters) {
    this.filters = filters;
    this.fillForm(filters);
    this.stopTail();
    if (this.controller) this.controller.abort();
    this.controller = new AbortController();
    this.seen.clear();
    this.tbody.replaceChildren();
    this.next = null;
    this.newest = null;
    this.olderButton.hidden = true;
    this.status.textContent = "Loading…";
    try {
      const page = await this.fetchPage({ ...filters, limit: PAGE_SIZE }, { signal: this.controller.signal });
      this.add(page.traces, "append");
      this.next = page.next;
      this.newest = page.newest;
      this.olderButton.hidden = !this.next;
      this.updateStatus();
    } catch (err) {
      if (err.name === "AbortError") return;
      this.status.textContent = "";
      this.tbody.replaceChildren(h("tr", {}, h("td", { colspan: 7 },
        notice(err instanceof ApiError ? `Could not load traces: ${err.message}` : String(err), "error"))));
      return;
    }
    this.startTail();
  }

  async loadOlder() {
    if (!this.next) return;
    this.olderButton.disabled = true;
    try {
      const page = await this.fetchPage({ ...this.filters, limit: PAGE_SIZE, before: this.next });
      this.add(page.traces, "append");
      this.next = page.next;
      this.olderButton.hidden = !this.next;
      this.updateStatus();
    } catch (err) {
      this.status.textContent = `Could not load older traces: ${err.message}`;
    } finally {
      this.olderButton.disabled = false;
    }
  }

  updateStatus() {
    const n = this.seen.size;
    this.status.textContent = n === 0
      ? (Object.keys(this.filters).length ? "No traces match these filters." : "No traces yet.")
      : `${fmt.plural(n, "trace")} shown${this.next ? " (more older)" : ""}`;
  }

  add(traces, where) {
    const rows = [];
    for (const t of traces || []) {
      if (this.seen.has(t.root_span_id)) {
        const old = this.tbody.querySelector(`tr[data-root="${CSS.escape(t.root_span_id)}"]`);
        if (old) old.replaceWith(this.row(t, false));
        continue;
      }
      this.seen.add(t.root_span_id);
      rows.push(this.row(t, where === "prepend"));
    }
    if (where === "prepend") this.tbody.prepend(...rows);
    else this.tbody.append(...rows);
  }

  row(t, fresh) {
    const scores = h("span", { class: "score-chips" });
    for (const [name, value] of Object.entries(t.scores || {})) {
      scores.append(h("span", { class: "chip", title: name }, `${name} ${fmt.score(value)}`));
    }
    const href = this.traceHref(t.root_span_id);
    const tr = h("tr", {
      class: `trace-row${t.errors ? " has-error" : ""}${fresh ? " fresh" : ""}`,
      dataset: { root: t.root_span_id },
    },
      h("td", { class: "name" }, typeIcon(t.type),
        h("a", { href, "data-link": true, text: t.name || "(unnamed)" })),
      h("td", { title: fmt.iso(t.start), text: fmt.time(t.start) }),
      h("td", {}, t.running ? h("span", { class: "badge badge-running" }, glyph("running"), "running")
        : fmt.duration(t.duration)),
      h("td", { class: "num", text: fmt.number(t.spans) }),
      h("td", { class: "num" }, t.errors
        ? h("span", { class: "badge badge-error" }, glyph("error"), fmt.number(t.errors)) : ""),
      h("td", {}, scores),
      h("td", { class: "num", text: t.tokens ? fmt.number(t.tokens) : "" }));
    tr.addEventListener("click", (e) => {
      if (e.target.closest("a")) return;
      tr.querySelector("a").click();
    });
    return tr;
  }

  setTail(on) {
    this.tailing = on;
    if (on) this.startTail();
    else this.stopTail();
  }

  /** Stop polling while something else is shown (an open trace); resume after. */
  pause(paused) {
    this.paused = paused;
    if (paused) this.stopTail();
    else this.startTail();
  }

  startTail() {
    this.stopTail();
    if (!this.tailing || this.paused) return;
    this.timer = setTimeout(() => this.poll(), TAIL_MS);
  }

  stopTail() {
    clearTimeout(this.timer);
    this.timer = 0;
  }

  async poll() {
    this.timer = 0;
    try {
      const params = { ...this.filters, limit: 500 };
      if (this.newest) params.after = this.newest;
      const page = await this.fetchPage(params);
      if (!this.tailing || this.paused) return;
      if (page.traces && page.traces.length) {
        this.add(page.traces, "prepend");
        this.updateStatus();
      }
      if (page.newest) this.newest = page.newest;
      if (!this.newest && !this.next && page.next) this.next = page.next;
    } catch {
      // the next poll tries again
    }
    this.startTail();
  }

  destroy() {
    this.stopTail();
    if (this.controller) this.controller.abort();
  }
}

// The selected span: fetched on selection (GET /api/traces/{root}/spans/{span}) and shown as
// sections: error, conversation (llm spans), input, output, expected, scores, metrics,
// metadata, tags, attachments. Fields the server truncated (over 64 KB) show a preview and a
// "Load full" button (?full=1).

import { api, ApiError } from "./api.js";
import { conversationView, isMessages } from "./chat.js";
import { h, notice } from "./dom.js";
import * as fmt from "./format.js";
import { glyph, typeIcon } from "./icons.js";
import { isTruncated, jsonView } from "./json_view.js";
import { attachmentView, externalAttachmentView, findAttachments, isAttachment } from "./media.js";

const VALUE_FIELDS = ["input", "output", "expected", "metadata"];
const TOKEN_METRICS = ["prompt_tokens", "completion_tokens", "tokens", "total_tokens"];

export class SpanDetail {
  /** onSelect(span_id): select another span of the trace (a parent link). */
  constructor({ onSelect }) {
    this.onSelect = onSelect;
    this.el = h("aside", { class: "span-detail", "aria-label": "Span details" });
    this.controller = null;
    this.states = {};
  }

  /** Show span `spanId` of trace `rootId`; `skeleton` is its entry in the trace's span list. */
  async show(rootId, spanId, skeleton, parentNames) {
    if (this.controller) this.controller.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.el.replaceChildren(header(skeleton, null, parentNames, this.onSelect),
      h("p", { class: "loading", role: "status" }, "Loading span…"));
    let row;
    try {
      const answer = await api.span(rootId, spanId, false, { signal: controller.signal });
      row = answer.row;
      this.states = answer.attachments || {};
    } catch (err) {
      if (err.name === "AbortError") return;
      this.el.replaceChildren(header(skeleton, null, parentNames, this.onSelect),
        notice(err instanceof ApiError && err.status === 404
          ? "Span not found: it is not in this trace's stored rows."
          : `Could not load the span: ${err.message}`, "error"));
      return;
    }
    if (controller.signal.aborted) return;
    this.render(rootId, spanId, row, skeleton, parentNames);
  }

  clear() {
    if (this.controller) this.controller.abort();
    this.el.replaceChildren(h("p", { class: "hint" }, "Select a span to see its input and output."));
  }

  render(rootId, spanId, row, skeleton, parentNames) {
    const images = new Set(Object.keys(row._images || {}));
    const body = h("div", { class: "span-sections" });
    this.el.replaceChildren(header(skeleton, row, parentNames, this.onSelect), body);
    const type = (row.span_attributes && row.span_attributes.type) || (skeleton && skeleton.type);

    const loadFull = async (field, section) => {
      const button = section.querySelector("button.load-full");
      if (button) button.disabled = true;
      try {
        const full = (await api.span(rootId, spanId, true)).row;
        row[field] = full[field];
        section.replaceWith(fieldSection(field, row[field], images, loadFull));
      } catch (err) {
        section.append(notice(`Could not load it: ${err.message}`, "error"));
        if (button) button.disabled = false;
      }
    };

    if (row.error !== undefined && row.error !== null) body.append(errorSection(row.error, loadFull));
    let chat = null;
    if (type === "llm" && isMessages(row.input)) {
      chat = conversationView(row.input, isTruncated(row.output) ? undefined : row.output);
    }
    if (chat) {
      const raw = h("div", { class: "raw-io", hidden: true });
      const toggle = h("button", {
        type: "button", class: "small", "aria-pressed": "false",
      }, "Show JSON");
      toggle.addEventListener("click", () => {
        raw.hidden = !raw.hidden;
        toggle.setAttribute("aria-pressed", String(!raw.hidden));
        toggle.textContent = raw.hidden ? "Show JSON" : "Hide JSON";
      });
      body.append(section("Conversation", chat, toggle));
      for (const field of ["input", "output"]) {
        if (row[field] !== undefined) raw.append(fieldSection(field, row[field], images, loadFull));
      }
      body.append(raw);
      if (isTruncated(row.output)) body.append(fieldSection("output", row.output, images, loadFull));
    } else {
      for (const field of ["input", "output"]) {
        if (row[field] !== undefined) body.append(fieldSection(field, row[field], images, loadFull));
      }
    }
    if (row.expected !== undefined && row.expected !== null) {
      body.append(fieldSection("expected", row.expected, images, loadFull));
    }
    if (row.scores && Object.keys(row.scores).length) body.append(scoresSection(row.scores));
    body.append(metricsSection(row.metrics || {}));
    if (row.metadata !== undefined && row.metadata !== null &&
        !(typeof row.metadata === "object" && Object.keys(row.metadata).length === 0)) {
      body.append(fieldSection("metadata", row.metadata, images, loadFull));
    }
    if (Array.isArray(row.tags) && row.tags.length) {
      body.append(section("Tags", h("ul", { class: "tags" },
        row.tags.map((t) => h("li", { class: "tag", text: String(t) })))));
    }
    const refs = [];
    for (const field of VALUE_FIELDS) findAttachments(row[field], refs);
    if (refs.length) {
      body.append(section(`Attachments (${refs.length})`, h("div", { class: "attachments" },
        refs.map((r) => (isAttachment(r) ? attachmentView(r, this.states[r.key] || {})
          : externalAttachmentView(r))))));
    }
  }
}

function header(skeleton, row, parentNames, onSelect) {
  const attrs = (row && row.span_attributes) || {};
  const name = attrs.name || (skeleton && skeleton.name) || "span";
  const type = attrs.type || (skeleton && skeleton.type) || "";
  const metrics = (row && row.metrics) || {};
  const start = metrics.start ?? (skeleton && skeleton.start);
  const end = metrics.end ?? (skeleton && skeleton.end);
  const running = skeleton ? skeleton.running : end === undefined || end === null;
  const hasError = row ? row.error !== undefined && row.error !== null : skeleton && skeleton.error;
  const badges = h("div", { class: "badges" });
  if (type) badges.append(h("span", { class: `badge type-${type}`, text: type }));
  if (hasError) badges.append(h("span", { class: "badge badge-error" }, glyph("error"), "error"));
  if (running) badges.append(h("span", { class: "badge badge-running" }, glyph("running"), "running"));
  const facts = h("dl", { class: "facts" });
  const fact = (label, value, title) => {
    if (value === "" || value === null || value === undefined) return;
    facts.append(h("div", {}, h("dt", { text: label }), h("dd", { title }, value)));
  };
  fact("Duration", running ? "running" : fmt.duration(end - start));
  fact("Started", fmt.time(start), fmt.iso(start));
  fact("Span id", h("code", { text: (row && row.span_id) || (skeleton && skeleton.span_id) || "" }));
  // Where it ran: the host and process the aggregator received it from (a fleet's trace
  // gathers spans of many hosts).
  const origin = row && row.origin;
  if (origin && typeof origin === "object") {
    const host = typeof origin.host === "string" ? origin.host : "";
    const pid = Number.isInteger(origin.pid) ? `pid ${origin.pid}` : "";
    fact("Ran on", [host, pid].filter(Boolean).join(" · "),
      `host ${host || "unknown"}, process ${Number.isInteger(origin.pid) ? origin.pid : "unknown"}`);
  }
  if (skeleton && skeleton.parents && skeleton.parents.length) {
    const links = skeleton.parents.map((p) => h("button", {
      type: "button", class: "linklike", onclick: () => onSelect(p),
      title: p,
    }, (parentNames && parentNames.get(p)) || p.slice(0, 13)));
    fact(skeleton.parents.length > 1 ? "Parents" : "Parent", h("span", { class: "parent-links" }, links));
  }
  return h("header", { class: "span-header" },
    h("h2", {}, typeIcon(type), h("span", { text: name })), badges, facts);
}

function section(title, content, ...extra) {
  return h("section", { class: "field", "aria-label": title },
    h("div", { class: "field-head" }, h("h3", { text: title }), ...extra), content);
}

function fieldSection(field, value, images, loadFull) {
  const title = field[0].toUpperCase() + field.slice(1);
  if (isTruncated(value)) {
    const s = section(title, h("div", { class: "truncated" },
      h("p", { class: "notice notice-warn" },
        `Truncated: ${fmt.number(value.bytes)} bytes of JSON. The preview below is its first part.`),
      h("pre", { class: "json-text", text: String(value.preview ?? "") })));
    const button = h("button", { type: "button", class: "load-full" }, "Load full");
    button.addEventListener("click", () => loadFull(field, s));
    s.querySelector(".field-head").append(button);
    return s;
  }
  return section(title, jsonView(value, { pointer: `/${field}`, images }));
}

function errorSection(error, loadFull) {
  if (isTruncated(error)) return fieldSection("error", error, new Set(), loadFull);
  let content;
  if (typeof error === "string") {
    const [first, ...rest] = error.split("\n");
    content = h("div", { class: "error-box" },
      h("p", { class: "error-message", text: first }),
      rest.join("\n").trim() ? h("pre", { class: "traceback", text: rest.join("\n").replace(/^\n+/, "") }) : null);
  } else {
    content = h("div", { class: "error-box" }, jsonView(error));
  }
  const s = section("Error", content);
  s.classList.add("field-error");
  return s;
}

function scoresSection(scores) {
  const table = h("table", { class: "kv scores" },
    h("tbody", {}, Object.entries(scores).map(([name, value]) =>
      h("tr", {}, h("th", { scope: "row", text: name }),
        h("td", {}, value === null ? "–" : scoreBar(value))))));
  return section("Scores", table);
}

export function scoreBar(value) {
  const bar = h("span", { class: "score-bar", "aria-hidden": "true" }, h("span", { class: "score-fill" }));
  if (Number.isFinite(value)) bar.firstChild.style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;
  return h("span", { class: "score" }, bar, h("span", { text: fmt.score(value) }));
}

function metricsSection(metrics) {
  const rows = [];
  if (Number.isFinite(metrics.start) && Number.isFinite(metrics.end)) {
    rows.push(["duration", fmt.duration(metrics.end - metrics.start)]);
  }
  if (Number.isFinite(metrics.time_to_first_token)) {
    rows.push(["time_to_first_token", fmt.duration(metrics.time_to_first_token)]);
  }
  for (const name of TOKEN_METRICS) {
    if (metrics[name] !== undefined) rows.push([name, fmt.number(metrics[name])]);
  }
  for (const [name, value] of Object.entries(metrics)) {
    if (["start", "end", "time_to_first_token", ...TOKEN_METRICS].includes(name)) continue;
    rows.push([name, typeof value === "number" ? fmt.number(value) : fmt.brief(value)]);
  }
  if (Number.isFinite(metrics.start)) rows.push(["start", fmt.time(metrics.start)]);
  if (Number.isFinite(metrics.end)) rows.push(["end", fmt.time(metrics.end)]);
  return section("Metrics", h("table", { class: "kv metrics" }, h("tbody", {},
    rows.map(([k, v]) => h("tr", {}, h("th", { scope: "row", text: k }), h("td", { text: v }))))));
}

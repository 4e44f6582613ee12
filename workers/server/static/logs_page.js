// A list of traces with a trace opened over it: /p/{project}/logs and
// /p/{project}/experiments/{name}, both with ?r=<root_span_id>&s=<span_id> (the permalink).
// The list stays in the page (and its scroll position) while a trace is open.

import { h } from "./dom.js";
import { setUrl } from "./router.js";
import { TraceList, filtersOf } from "./trace_list.js";
import { TraceView } from "./trace_view.js";

/** The URL of the current page with `changes` to its query (null removes a key). */
function withQuery(changes) {
  const q = new URLSearchParams(location.search);
  for (const [key, value] of Object.entries(changes)) {
    q.delete(key);
    if (value === null || value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) q.append(key, String(v));
  }
  const s = q.toString();
  return location.pathname + (s ? `?${s}` : "");
}

function listUrl() {
  return withQuery({ r: null, s: null });
}

/**
 * A list page. opts: {main, query, label, heading: Element[], fetchPage, backLabel}.
 * Returns the router controller.
 */
export function listWithTrace({ main, query, label, heading, fetchPage, backLabel, navigate }) {
  const list = new TraceList({
    label,
    fetchPage,
    traceHref: (root) => {
      const q = new URLSearchParams(location.search);
      q.delete("s");
      q.set("r", root);
      return `${location.pathname}?${q}`;
    },
    onFilters: (params) => {
      const changes = { since: null, until: null, name: null, type: null, errors: null, score: null, meta: null, q: null, r: null, s: null };
      navigate(withQuery({ ...changes, ...params }));
    },
  });
  const listBox = h("div", { class: "list-page" }, ...heading, list.el);
  const trace = new TraceView({
    backHref: listUrl(), backLabel,
    onSpan: (spanId) => setUrl(withQuery({ s: spanId })),
  });
  main.append(listBox, trace.el);

  let filterKey = null;
  const apply = (q) => {
    const filters = filtersOf(q);
    const key = JSON.stringify(filters);
    const root = q.get("r");
    if (key !== filterKey) {
      filterKey = key;
      list.load(filters);
    }
    if (root) {
      trace.backHref = listUrl();
      trace.el.querySelectorAll("a.back").forEach((a) => a.setAttribute("href", trace.backHref));
      listBox.hidden = true;
      trace.el.hidden = false;
      list.pause(true);
      trace.open(root, q.get("s"));
    } else {
      listBox.hidden = false;
      trace.el.hidden = true;
      list.pause(false);
    }
  };
  apply(query);
  return {
    update: ({ query: q }) => {
      apply(q);
      return true;
    },
    destroy: () => {
      list.destroy();
      trace.destroy();
    },
  };
}

// /p/{project}/compare?a=<experiment id>&b=<experiment id>: two experiments side by side. Per
// score, the means and their difference; then the root rows matched (by input, else by name),
// each with its score deltas, regressions and improvements marked. Filter by status.

import { api } from "./api.js";
import { h, link, notice } from "./dom.js";
import * as fmt from "./format.js";
import { crumbs, title, urls } from "./pages.js";
import { notFoundOr } from "./trace_view.js";

const STATUS_LABELS = {
  regression: "Regression", improvement: "Improvement", same: "Same",
  only_a: "Only in A", only_b: "Only in B",
};

export function comparePage(main, { params: [project], query }) {
  const a = query.get("a");
  const b = query.get("b");
  crumbs(["Projects", urls.projects()], [project, urls.logs(project)],
    ["Experiments", urls.experiments(project)], ["Compare"]);
  title(`Compare · ${project}`);
  if (!a || !b) {
    main.append(h("h1", { text: "Compare experiments" }),
      notice("Pick two experiments to compare on the experiments page."),
      h("p", {}, link(urls.experiments(project), "Experiments")));
    return null;
  }
  const body = h("div", {}, h("p", { class: "loading", role: "status" }, "Comparing…"));
  main.append(body);
  const controller = new AbortController();
  api.compare(a, b, { signal: controller.signal }).then((data) => {
    body.replaceChildren(...render(project, data));
  }).catch((err) => {
    if (err.name !== "AbortError") body.replaceChildren(notFoundOr(err, urls.experiments(project), "Experiments", "Experiment", `${a} / ${b}`));
  });
  return { destroy: () => controller.abort() };
}

function deltaCell(value) {
  const cls = !Number.isFinite(value) || value === 0 ? "delta same" : value > 0 ? "delta up" : "delta down";
  return h("td", { class: cls, text: fmt.delta(value) });
}

function render(project, data) {
  const expLink = (side) => link(urls.experiment(project, data[side].name, data[side].id), data[side].name);
  const heading = h("h1", {}, "Compare ", expLink("a"), h("span", { class: "vs", text: " vs " }), expLink("b"));
  const legend = h("p", { class: "subtitle" }, "A is the baseline; deltas are B − A.");
  const scoreNames = Object.keys(data.scores || {}).sort();
  const scores = h("table", { class: "grid compare-scores", "aria-label": "Score means" },
    h("thead", {}, h("tr", {}, ["Score", `A: ${data.a.name}`, `B: ${data.b.name}`, "Δ"].map((c) =>
      h("th", { scope: "col", text: c })))),
    h("tbody", {}, scoreNames.map((s) => {
      const v = data.scores[s];
      return h("tr", {}, h("th", { scope: "row", text: s }),
        h("td", { text: fmt.score(v.a) }), h("td", { text: fmt.score(v.b) }), deltaCell(v.delta));
    })));

  const counts = {};
  for (const r of data.rows) counts[r.status] = (counts[r.status] || 0) + 1;
  const tbody = h("tbody", {});
  const rowScoreNames = [...new Set(data.rows.flatMap((r) => Object.keys(r.deltas || {})))].sort();
  const rows = data.rows.map((r) => compareRow(project, data, r, rowScoreNames));
  tbody.append(...rows);
  const filters = h("div", { class: "status-filters", role: "group", "aria-label": "Show rows" });
  const setFilter = (status) => {
    for (const tr of rows) tr.hidden = status !== "all" && tr.dataset.status !== status;
    for (const btn of filters.querySelectorAll("button")) {
      btn.setAttribute("aria-pressed", String(btn.dataset.status === status));
    }
  };
  const button = (status, label, n) => h("button", {
    type: "button", class: "small", dataset: { status }, "aria-pressed": String(status === "all"),
    onclick: () => setFilter(status),
  }, `${label} (${n})`);
  filters.append(button("all", "All", data.rows.length));
  for (const [status, label] of Object.entries(STATUS_LABELS)) {
    if (counts[status]) filters.append(button(status, label, counts[status]));
  }
  const table = h("table", { class: "grid compare-rows", "aria-label": "Rows compared" },
    h("thead", {}, h("tr", {},
      ["Status", "Input", `Output A`, `Output B`].map((c) => h("th", { scope: "col", text: c })),
      rowScoreNames.map((s) => h("th", { scope: "col", text: `Δ ${s}` })))),
    tbody);
  return [heading, legend, h("h2", { text: "Scores" }), scores,
    h("h2", { text: "Rows" }), filters, data.rows.length ? table : notice("No rows in either experiment.")];
}

function compareRow(project, data, r, scoreNames) {
  const side = r.a || r.b || {};
  const open = (which) => {
    const s = r[which];
    if (!s) return h("span", { class: "missing", text: "—" });
    const href = `${urls.experiment(project, data[which].name, data[which].id)}&r=${encodeURIComponent(s.root_span_id)}`;
    return h("div", { class: "cell-output" },
      h("span", { class: "brief", text: fmt.brief(s.output, 200) }),
      h("a", { href, "data-link": true, class: "open-trace", "aria-label": `Open trace in ${which.toUpperCase()}` }, "trace"));
  };
  return h("tr", { class: `status-${r.status}`, dataset: { status: r.status } },
    h("td", {}, h("span", { class: `badge badge-${r.status}`, text: STATUS_LABELS[r.status] || r.status }),
      h("span", { class: "match", text: r.match === "name" ? `by name: ${side.name || ""}` : "" })),
    h("td", { class: "brief", text: fmt.brief(side.input, 200) }),
    h("td", {}, open("a")),
    h("td", {}, open("b")),
    scoreNames.map((s) => (r.deltas && r.deltas[s] !== undefined ? deltaCell(r.deltas[s]) : h("td", { text: "" }))));
}

// /p/{project}/logs, /p/{project}/experiments and /p/{project}/experiments/{name}: a project's
// logs, its experiments (pick two to compare), and one experiment's rows.

import { api } from "./api.js";
import { h, link, notice } from "./dom.js";
import * as fmt from "./format.js";
import { listWithTrace } from "./logs_page.js";
import { crumbs, projectTabs, title, urls } from "./pages.js";
import { navigate } from "./router.js";
import { scoreBar } from "./span_detail.js";
import { notFoundOr } from "./trace_view.js";

export function logsPage(main, { params: [project], query }) {
  crumbs(["Projects", urls.projects()], [project, urls.logs(project)], ["Logs"]);
  title(`${project} logs`);
  return listWithTrace({
    main, query, navigate,
    label: `Logs of ${project}`,
    heading: [h("h1", { text: project }), projectTabs(project, "Logs")],
    fetchPage: (params, opts) => api.projectTraces(project, params, opts),
    backLabel: "All logs",
  });
}

export function experimentsPage(main, { params: [project] }) {
  crumbs(["Projects", urls.projects()], [project, urls.logs(project)], ["Experiments"]);
  title(`${project} experiments`);
  const body = h("div", {}, h("p", { class: "loading", role: "status" }, "Loading experiments…"));
  main.append(h("h1", { text: project }), projectTabs(project, "Experiments"), body);
  const controller = new AbortController();
  api.experiments(project, { signal: controller.signal }).then(({ experiments }) => {
    body.replaceChildren(experimentsTable(project, experiments));
  }).catch((err) => {
    if (err.name !== "AbortError") body.replaceChildren(notFoundOr(err, null, null, "Project", project));
  });
  return { destroy: () => controller.abort() };
}

function experimentsTable(project, experiments) {
  if (!experiments.length) {
    return notice("No experiments in this project yet: start one with tracer.init(project, name).");
  }
  const scoreNames = [...new Set(experiments.flatMap((e) => Object.keys(e.scores || {})))].sort();
  const picked = [];
  const compare = h("button", { type: "button", class: "primary", disabled: true }, "Compare selected");
  const hint = h("span", { class: "hint", role: "status", text: "Pick two experiments to compare." });
  const byId = new Map(experiments.map((e) => [e.id, e]));
  const refresh = () => {
    compare.disabled = picked.length !== 2;
    hint.textContent = picked.length === 2
      ? `Compare ${byId.get(picked[0]).name} (A) with ${byId.get(picked[1]).name} (B).`
      : "Pick two experiments to compare.";
  };
  compare.addEventListener("click", () => {
    if (picked.length !== 2) return;
    // A is the older (the baseline), B the newer.
    const [a, b] = [...picked].sort((x, y) => String(byId.get(x).created).localeCompare(String(byId.get(y).created)));
    navigate(urls.compare(project, a, b));
  });
  const names = new Map();
  for (const e of experiments) names.set(e.name, (names.get(e.name) || 0) + 1);
  const rows = experiments.map((e) => {
    const box = h("input", { type: "checkbox", "aria-label": `Select ${e.name}`, value: e.id });
    box.addEventListener("change", () => {
      const at = picked.indexOf(e.id);
      if (box.checked && at < 0) picked.push(e.id);
      if (!box.checked && at >= 0) picked.splice(at, 1);
      while (picked.length > 2) {
        const dropped = picked.shift();
        const other = document.querySelector(`input[value="${CSS.escape(dropped)}"]`);
        if (other) other.checked = false;
      }
      refresh();
    });
    return h("tr", {},
      h("td", {}, box),
      h("td", {}, link(urls.experiment(project, e.name, names.get(e.name) > 1 ? e.id : null), e.name)),
      h("td", { title: fmt.iso(e.created), text: fmt.when(e.created) }),
      h("td", { class: "num", text: fmt.number(e.traces) }),
      h("td", { class: "num", text: fmt.number(e.spans) }),
      scoreNames.map((s) => h("td", {}, e.scores && e.scores[s] !== undefined ? scoreBar(e.scores[s]) : "–")));
  });
  return h("div", {},
    h("div", { class: "compare-bar" }, compare, hint),
    h("table", { class: "grid", "aria-label": "Experiments" },
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, h("span", { class: "sr-only", text: "Select" })),
        ["Experiment", "Created", "Traces", "Spans"].map((c) => h("th", { scope: "col", text: c })),
        scoreNames.map((s) => h("th", { scope: "col", text: s })))),
      h("tbody", {}, rows)));
}

export function experimentPage(main, { params: [project, name], query }) {
  crumbs(["Projects", urls.projects()], [project, urls.logs(project)],
    ["Experiments", urls.experiments(project)], [name]);
  title(`${name} · ${project}`);
  const box = h("div", {}, h("p", { class: "loading", role: "status" }, "Loading experiment…"));
  main.append(box);
  let inner = null;
  let destroyed = false;
  let pendingQuery = query;
  api.experiments(project).then(({ experiments }) => {
    if (destroyed) return;
    const wanted = query.get("id");
    const matching = experiments.filter((e) => (wanted ? e.id === wanted : e.name === name));
    // Several experiments may share a name: the newest, unless ?id= says which.
    matching.sort((x, y) => String(y.created).localeCompare(String(x.created)));
    const experiment = matching[0];
    if (!experiment) {
      box.replaceChildren(h("div", { class: "not-found" },
        h("h1", { text: "Experiment not found" }),
        h("p", {}, "No experiment ", h("code", { text: name }), " in project ",
          h("code", { text: project }), "."),
        h("p", {}, link(urls.experiments(project), "All experiments"))));
      return;
    }
    box.remove();
    const facts = h("dl", { class: "facts inline" },
      h("div", {}, h("dt", { text: "Traces" }), h("dd", { text: fmt.number(experiment.traces) })),
      h("div", {}, h("dt", { text: "Spans" }), h("dd", { text: fmt.number(experiment.spans) })),
      Object.entries(experiment.scores || {}).map(([s, v]) =>
        h("div", {}, h("dt", { text: s }), h("dd", { text: fmt.score(v) }))));
    inner = listWithTrace({
      main, query: pendingQuery, navigate,
      label: `Rows of experiment ${name}`,
      heading: [h("h1", { text: name }), h("p", { class: "subtitle" }, "Experiment of ",
        link(urls.logs(project), project), " · ", h("code", { text: experiment.id })), facts],
      fetchPage: (params, opts) => api.experimentTraces(experiment.id, params, opts),
      backLabel: "All rows",
    });
  }).catch((err) => {
    if (!destroyed) box.replaceChildren(notFoundOr(err, urls.experiments(project), "All experiments", "Project", project));
  });
  return {
    update: (ctx) => {
      pendingQuery = ctx.query;
      return inner ? inner.update(ctx) : true;
    },
    destroy: () => {
      destroyed = true;
      if (inner) inner.destroy();
    },
  };
}

// "/": the projects, with their trace and experiment counts and last activity.

import { api } from "./api.js";
import { h, link, notice } from "./dom.js";
import * as fmt from "./format.js";
import { crumbs, title, urls } from "./pages.js";

export function projectsPage(main) {
  crumbs(["Projects"]);
  title("Projects");
  const body = h("div", {}, h("p", { class: "loading", role: "status" }, "Loading projects…"));
  main.append(h("h1", { text: "Projects" }), body);
  const controller = new AbortController();
  api.projects({ signal: controller.signal }).then(({ projects }) => {
    if (!projects.length) {
      body.replaceChildren(notice("No projects yet: run a traced program (try `tracer demo`)."));
      return;
    }
    body.replaceChildren(h("table", { class: "grid", "aria-label": "Projects" },
      h("thead", {}, h("tr", {}, ["Project", "Traces", "Experiments", "Last trace"].map((c) =>
        h("th", { scope: "col", text: c })))),
      h("tbody", {}, projects.map((p) => h("tr", {},
        h("td", {}, link(urls.logs(p.name), p.name)),
        h("td", { class: "num", text: fmt.number(p.traces) }),
        h("td", { class: "num" }, p.experiments
          ? link(urls.experiments(p.name), fmt.number(p.experiments)) : "0"),
        h("td", { title: fmt.iso(p.last_start), text: fmt.time(p.last_start) }))))));
  }).catch((err) => {
    if (err.name !== "AbortError") body.replaceChildren(notice(`Could not load projects: ${err.message}`, "error"));
  });
  return { destroy: () => controller.abort() };
}

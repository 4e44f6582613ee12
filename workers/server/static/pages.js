// Shared page furniture: the breadcrumbs, a project's tabs, page titles.

import { h, link } from "./dom.js";

const enc = encodeURIComponent;

export const urls = {
  projects: () => "/",
  logs: (project) => `/p/${enc(project)}/logs`,
  experiments: (project) => `/p/${enc(project)}/experiments`,
  experiment: (project, name, id) =>
    `/p/${enc(project)}/experiments/${enc(name)}${id ? `?id=${enc(id)}` : ""}`,
  compare: (project, a, b) => `/p/${enc(project)}/compare?a=${enc(a)}&b=${enc(b)}`,
  status: () => "/status",
};

/** Set the breadcrumbs: [label, href] pairs, the last one the current page. */
export function crumbs(...items) {
  const nav = document.getElementById("crumbs");
  if (!nav) return;
  const list = h("ol", {});
  items.forEach(([label, href], i) => {
    const last = i === items.length - 1;
    list.append(h("li", {}, last || !href
      ? h("span", { "aria-current": last ? "page" : null, text: label })
      : link(href, label)));
  });
  nav.replaceChildren(list);
}

export function title(text) {
  document.title = text ? `${text} · tracer` : "tracer";
}

/** The tabs of a project's pages. */
export function projectTabs(project, current) {
  const tab = (name, href) => h("a", {
    href, "data-link": true, class: `tab${current === name ? " active" : ""}`,
    "aria-current": current === name ? "page" : null,
  }, name);
  return h("nav", { class: "tabs", "aria-label": "Project" },
    tab("Logs", urls.logs(project)), tab("Experiments", urls.experiments(project)));
}

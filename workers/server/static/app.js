// The viewer's entry point: the routes (docs/server.md) and the router started on <main>.

import { comparePage } from "./compare_page.js";
import { h, link } from "./dom.js";
import { experimentPage, experimentsPage, logsPage } from "./experiments_page.js";
import { crumbs, title } from "./pages.js";
import { projectsPage } from "./projects_page.js";
import { startRouter } from "./router.js";
import { statusPage } from "./status_page.js";

function notFoundPage(main) {
  crumbs(["Not found"]);
  title("Not found");
  main.append(h("div", { class: "not-found" },
    h("h1", { text: "Page not found" }),
    h("p", {}, "Nothing lives at ", h("code", { text: location.pathname }), "."),
    h("p", {}, link("/", "Projects"))));
}

const routes = [
  { name: "projects", pattern: /^\/$/, page: projectsPage },
  { name: "logs", pattern: /^\/p\/([^/]+)\/logs\/?$/, page: logsPage },
  { name: "experiments", pattern: /^\/p\/([^/]+)\/experiments\/?$/, page: experimentsPage },
  { name: "experiment", pattern: /^\/p\/([^/]+)\/experiments\/([^/]+)\/?$/, page: experimentPage },
  { name: "compare", pattern: /^\/p\/([^/]+)\/compare\/?$/, page: comparePage },
  { name: "status", pattern: /^\/status\/?$/, page: statusPage },
  { name: "not-found", pattern: /^$/, page: notFoundPage },
];

startRouter(document.getElementById("main"), routes);

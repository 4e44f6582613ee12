// The client-side router: one index.html serves every page; links marked data-link (and any
// same-origin link to a page) change the URL with the History API and render the page.
//
// A page is `render(main, ctx)` returning an optional controller:
//   {update(ctx) -> bool, destroy()}
// When only the query changes (a trace opened, a span selected, a filter) and the page has
// `update`, it is asked to follow; if it returns false the page is rendered anew.

let routes = [];
let current = null; // {route, params, controller, path}
let mainEl = null;

/** routes: [{pattern: RegExp, page: render, name}], matched against the decoded path. */
export function startRouter(main, table) {
  mainEl = main;
  routes = table;
  document.addEventListener("click", onClick);
  window.addEventListener("popstate", () => show());
  show();
}

/** Go to `url` (a path with its query): pushes a history entry unless `replace`. */
export function navigate(url, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  show();
}

/** Change the URL without rendering (the page already shows it). */
export function setUrl(url, { replace = true } = {}) {
  if (url === location.pathname + location.search) return;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  if (current) current.search = location.search;
}

function onClick(event) {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const a = event.target.closest("a");
  if (!a || !a.hasAttribute("data-link") || a.target || a.hasAttribute("download")) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
}

function match(path) {
  for (const route of routes) {
    const m = route.pattern.exec(path);
    if (m) {
      let params;
      try {
        params = m.slice(1).map((p) => decodeURIComponent(p));
      } catch {
        return null;
      }
      return { route, params };
    }
  }
  return null;
}

function show() {
  const path = location.pathname;
  const query = new URLSearchParams(location.search);
  const found = match(path);
  if (current && found && current.route === found.route && current.path === path &&
      current.controller && current.controller.update) {
    if (current.search === location.search) return;
    current.search = location.search;
    if (current.controller.update({ params: found.params, query })) return;
  }
  if (current && current.controller && current.controller.destroy) current.controller.destroy();
  current = null;
  mainEl.replaceChildren();
  window.scrollTo(0, 0);
  const route = found ? found.route : routes.find((r) => r.name === "not-found");
  const params = found ? found.params : [];
  const controller = route.page(mainEl, { params, query }) || null;
  current = { route, params, controller, path, search: location.search };
}

// The JSON API client (docs/server.md): every request of the viewer goes through `get`.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Where the browser logs in when the server asks for the API key (401). */
export function loginUrl() {
  return `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
}

/** The URL of `path` with `params` (arrays repeat the parameter; empty values are left out). */
export function apiUrl(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(params)) {
    const values = Array.isArray(value) ? value : [value];
    for (const v of values) {
      if (v !== undefined && v !== null && v !== "") url.searchParams.append(key, String(v));
    }
  }
  return url.pathname + url.search;
}

/** GET a JSON endpoint; throws ApiError with the server's {"error": ...} message. A 401 sends
 * the browser to the login form (the cookie is missing or stale). */
export async function get(path, params = {}, { signal } = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path, params), {
      signal, credentials: "same-origin", headers: { Accept: "application/json" },
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `the server cannot be reached (${err.message})`);
  }
  if (response.status === 401) {
    location.assign(loginUrl());
    throw new ApiError(401, "the API key is required");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body && typeof body.error === "string" ? body.error : response.statusText;
    throw new ApiError(response.status, message || `HTTP ${response.status}`);
  }
  return body;
}

const enc = encodeURIComponent;

export const api = {
  projects: (opts) => get("/api/projects", {}, opts),
  projectTraces: (project, params, opts) =>
    get(`/api/projects/${enc(project)}/traces`, params, opts),
  experimentTraces: (id, params, opts) => get(`/api/experiments/${enc(id)}/traces`, params, opts),
  trace: (root, opts) => get(`/api/traces/${enc(root)}`, {}, opts),
  span: (root, span, full, opts) =>
    get(`/api/traces/${enc(root)}/spans/${enc(span)}`, full ? { full: 1 } : {}, opts),
  experiments: (project, opts) => get(`/api/projects/${enc(project)}/experiments`, {}, opts),
  compare: (a, b, opts) => get("/api/compare", { a, b }, opts),
  stats: (opts) => get("/api/stats", {}, opts),
};

/** The URL of an attachment's content (download: as a file, with its recorded filename). */
export function attachmentUrl(key, download = false) {
  return `/api/attachments/${enc(key)}${download ? "?download=1" : ""}`;
}

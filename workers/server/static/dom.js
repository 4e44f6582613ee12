// DOM helpers. Everything the viewer shows is built with these: text goes in through
// textContent (text nodes), never through innerHTML, so logged content cannot become markup.

/**
 * h("a", {href: "/x", class: "link", onclick: fn}, "text", child, [more]) -> Element.
 * Props: "class", "text" (textContent), "dataset" (an object), "on<event>" (a listener);
 * everything else is an attribute (true -> empty attribute; false/null/undefined -> left out).
 * "style" is refused: the Content-Security-Policy forbids style attributes (use classes, or
 * element.style properties, which the CSSOM allows).
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) setProps(el, props);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** The same for SVG elements (icons). */
export function svg(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  if (props) setProps(el, props);
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "style") throw new Error("style attributes are forbidden by the CSP");
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
}

/** Append children: nodes, strings (as text), numbers, arrays of them; nullish skipped. */
export function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
  return el;
}

/** Remove every child of `el`, then append `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A link handled by the client-side router (same-origin path). */
export function link(href, ...children) {
  return h("a", { href, "data-link": true }, ...children);
}

/** A visually hidden label for screen readers (and Playwright's accessible names). */
export function srOnly(text) {
  return h("span", { class: "sr-only", text });
}

/** A notice: an error, an empty state. */
export function notice(text, kind = "info") {
  return h("p", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" },
    text);
}

/** Only http(s) URLs may become hrefs of links to elsewhere (never javascript: and the like). */
export function safeHttpUrl(value) {
  if (typeof value !== "string") return null;
  try {
    const url = new URL(value, location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

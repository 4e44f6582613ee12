// Span type icons: small inline SVGs built with DOM APIs (no markup strings, no files).

import { svg } from "./dom.js";

// 16x16 path data per span type.
const PATHS = {
  llm: "M8 1.5l1.6 3.9 3.9 1.6-3.9 1.6L8 12.5 6.4 8.6 2.5 7l3.9-1.6z M12.5 11l.7 1.8 1.8.7-1.8.7-.7 1.8-.7-1.8-1.8-.7 1.8-.7z",
  score: "M8 1.8l1.9 3.9 4.3.6-3.1 3 .7 4.3L8 11.6l-3.8 2 .7-4.3-3.1-3 4.3-.6z",
  function: "M10.5 2.5c-1.6 0-2.2.9-2.5 2.6L7 11c-.3 1.6-.9 2.5-2.5 2.5 M5 6.5h5.5",
  eval: "M3 8.5l3 3 7-7",
  task: "M3 3.5h10v9H3z M5.5 6.5h5 M5.5 9.5h3",
  tool: "M10.2 2.2a3.2 3.2 0 0 0-3.6 4.3L2.5 10.6a1.3 1.3 0 0 0 1.9 1.9l4.1-4.1a3.2 3.2 0 0 0 4.3-3.6l-1.9 1.9-1.8-.4-.4-1.8z",
  automation: "M8 2v3 M8 11v3 M2 8h3 M11 8h3 M8 5.5a2.5 2.5 0 1 0 0 5 2.5 2.5 0 0 0 0-5z",
  facet: "M2.5 8h11 M8 2.5v11",
  preprocessor: "M3 4h10 M5 8h6 M7 12h2",
  default: "M8 4.5a3.5 3.5 0 1 0 0 7 3.5 3.5 0 0 0 0-7z",
};
const FILLED = new Set(["llm", "score"]);

/** The icon of span type `type` (role img, named by the type). */
export function typeIcon(type) {
  const kind = PATHS[type] ? type : "default";
  return svg("svg", {
    class: `icon icon-${kind}${FILLED.has(kind) ? " filled" : ""}`, viewBox: "0 0 16 16",
    width: 16, height: 16, role: "img", "aria-label": type || "span",
  }, svg("title", { text: type || "span" }), svg("path", { d: PATHS[kind] }));
}

/** A few interface glyphs. */
const GLYPHS = {
  chevronRight: "M6 3.5l4.5 4.5L6 12.5",
  chevronDown: "M3.5 6l4.5 4.5L12.5 6",
  error: "M8 1.5l6.5 12H1.5z M8 6v3.5 M8 11.3v.2",
  running: "M8 2a6 6 0 1 0 6 6",
  parents: "M4 2.5v4a3 3 0 0 0 3 3h5 M12 2.5v4 M9.5 7l2.5 2.5L9.5 12",
  back: "M10 3.5L5.5 8l4.5 4.5",
  download: "M8 2.5v8 M4.5 7.5L8 11l3.5-3.5 M3 13.5h10",
  external: "M9 2.5h4.5V7 M13.5 2.5L7.5 8.5 M11.5 10v3.5h-9v-9H6",
};

export function glyph(name, label) {
  return svg("svg", {
    class: `glyph glyph-${name}`, viewBox: "0 0 16 16", width: 14, height: 14,
    ...(label ? { role: "img", "aria-label": label } : { "aria-hidden": "true" }),
  }, label ? svg("title", { text: label }) : null, svg("path", { d: GLYPHS[name] }));
}

// A collapsible JSON viewer. Objects and arrays are <details> elements whose children are built
// only when opened (large values stay cheap); strings are text nodes. Images, attachment
// references and truncation markers found inside render as what they are.

import { h } from "./dom.js";
import {
  attachmentChip, inlineImage, isAttachment, isExternalAttachment, isImageString,
} from "./media.js";

const OPEN_DEPTH = 2; // opened by default down to this depth...
const OPEN_SIZE = 30; // ...when they have at most this many entries
const LONG_STRING = 4000;
const PAGE = 200; // children shown per "show more"

/**
 * The view of `value`. ctx: {pointer: the JSON pointer of value (for `_images` flags),
 * images: Set of flagged pointers}.
 */
export function jsonView(value, ctx = {}) {
  const c = { pointer: ctx.pointer || "", images: ctx.images || new Set(), depth: 0 };
  if (typeof value === "string") return stringBlock(value, c, false);
  return h("div", { class: "json" }, node(null, value, c, false));
}

function escapePointer(key) {
  return String(key).replace(/~/g, "~0").replace(/\//g, "~1");
}

function isObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

export function isTruncated(v) {
  return isObject(v) && v.truncated === true && typeof v.bytes === "number";
}

function node(key, value, ctx, underImageUrl) {
  const label = key === null ? null : h("span", { class: "jv-key", text: key });
  if (value === null || typeof value !== "object") {
    return h("div", { class: "jv-leaf" }, label, label ? ": " : null,
      leaf(value, ctx, underImageUrl));
  }
  if (isAttachment(value) || isExternalAttachment(value)) {
    return h("div", { class: "jv-leaf" }, label, label ? ": " : null,
      attachmentChip(value));
  }
  const isArray = Array.isArray(value);
  const keys = isArray ? null : Object.keys(value);
  const size = isArray ? value.length : keys.length;
  const summary = h("summary", {}, label, label ? ": " : null,
    h("span", { class: "jv-brace", text: isArray ? "[" : "{" }),
    h("span", { class: "jv-count", text: `${size} ${isArray ? (size === 1 ? "item" : "items") : (size === 1 ? "key" : "keys")}` }),
    h("span", { class: "jv-brace", text: isArray ? "]" : "}" }));
  if (size === 0) {
    return h("div", { class: "jv-leaf" }, label, label ? ": " : null,
      h("span", { class: "jv-empty", text: isArray ? "[]" : "{}" }));
  }
  const details = h("details", { class: "jv-node" }, summary);
  const body = h("div", { class: "jv-children" });
  details.append(body);
  let built = 0;
  const build = () => {
    const end = Math.min(size, built + PAGE);
    const more = body.querySelector(":scope > .jv-more");
    if (more) more.remove();
    for (let i = built; i < end; i++) {
      const k = isArray ? i : keys[i];
      const child = { ...ctx, pointer: `${ctx.pointer}/${escapePointer(k)}`, depth: ctx.depth + 1 };
      body.append(node(String(k), value[k], child, k === "image_url" || (underImageUrl && k === "url")));
    }
    built = end;
    if (built < size) {
      body.append(h("button", {
        type: "button", class: "jv-more small", onclick: build,
      }, `Show ${Math.min(PAGE, size - built)} more of ${size - built}`));
    }
  };
  details.addEventListener("toggle", () => {
    if (details.open && built === 0) build();
  });
  if (ctx.depth < OPEN_DEPTH && size <= OPEN_SIZE) {
    build();
    details.open = true;
  }
  return details;
}

function leaf(value, ctx, underImageUrl) {
  if (typeof value === "string") return stringBlock(value, ctx, underImageUrl, true);
  if (value === null) return h("span", { class: "jv-null", text: "null" });
  if (typeof value === "number") return h("span", { class: "jv-num", text: String(value) });
  if (typeof value === "boolean") return h("span", { class: "jv-bool", text: String(value) });
  return h("span", { text: String(value) });
}

function stringBlock(value, ctx, underImageUrl, quoted = false) {
  const flagged = ctx.images.has(ctx.pointer);
  if (isImageString(value, { underImageUrl, flagged })) {
    const image = inlineImage(value);
    if (image) {
      const caption = value.startsWith("data:") ? `${value.slice(0, 40)}… (${value.length} characters)` : value;
      image.append(h("figcaption", { class: "jv-str", text: caption }));
      return image;
    }
  }
  const cls = quoted ? "jv-str" : "jv-text";
  if (value.length <= LONG_STRING) return h("span", { class: cls, text: value });
  const span = h("span", { class: cls, text: `${value.slice(0, LONG_STRING)}…` });
  const more = h("button", { type: "button", class: "small" },
    `Show all ${value.length.toLocaleString("en-US")} characters`);
  more.addEventListener("click", () => {
    span.textContent = value;
    more.remove();
  });
  return h("span", {}, span, " ", more);
}

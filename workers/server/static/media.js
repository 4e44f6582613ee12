// Images and attachments in logged values (README "Attachments and images").
//
// Images are kept in rows as logged: an image URL, a base64 data URL, or any URL under
// {"image_url": {"url": ...}}; the aggregator also flags them in the row's `_images` (JSON
// pointer -> how recognised). Attachments are references:
//   {"type": "braintrust_attachment", "key", "filename", "content_type", ...}
//   {"type": "external_attachment", "url", "filename", "content_type"}

import { attachmentUrl } from "./api.js";
import { h, safeHttpUrl } from "./dom.js";
import { glyph } from "./icons.js";

const IMAGE_URL = /^https?:\/\/\S+\.(png|jpe?g|gif|webp|bmp|svg|avif|heic)([?#]\S*)?$/i;
const DATA_IMAGE = /^data:image\/[a-z0-9.+-]+(;[a-z0-9=.+-]+)*;base64,[a-z0-9+/=\s]+$/i;

/** Whether a logged string is shown as an image: an image URL or an image data URL; under an
 * `image_url` key (or flagged by the aggregator) any http(s) or data:image URL. */
export function isImageString(value, { underImageUrl = false, flagged = false } = {}) {
  if (typeof value !== "string" || value.length < 8) return false;
  if (DATA_IMAGE.test(value.slice(0, 200)) && value.startsWith("data:image/")) return true;
  if (IMAGE_URL.test(value)) return true;
  if ((underImageUrl || flagged) && safeHttpUrl(value) && /^https?:/i.test(value)) return true;
  return false;
}

/** An inline image of a logged URL (http(s) or data:image only). */
export function inlineImage(src, alt = "logged image") {
  const ok = src.startsWith("data:image/") || safeHttpUrl(src);
  if (!ok) return null;
  const img = h("img", {
    class: "inline-image", src, alt, loading: "lazy", referrerpolicy: "no-referrer",
  });
  img.addEventListener("error", () => img.classList.add("broken"), { once: true });
  return h("figure", { class: "media" }, img);
}

export function isAttachment(value) {
  return isObject(value) && value.type === "braintrust_attachment" &&
    typeof value.key === "string";
}

export function isExternalAttachment(value) {
  return isObject(value) && value.type === "external_attachment" &&
    typeof value.url === "string";
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** A stored attachment: an inline preview by content type, its name, and a download link. */
export function attachmentView(ref, state = {}) {
  const type = String(ref.content_type || "application/octet-stream").toLowerCase();
  const name = String(ref.filename || ref.key);
  const src = attachmentUrl(ref.key);
  const status = state.upload_status || ref.upload_status;
  let preview = null;
  if (status === "error" || status === "missing") {
    preview = h("p", { class: "notice notice-error", role: "alert" },
      `Not stored: ${state.error_message || ref.error_message || "the upload failed"}`);
  } else if (status === "uploading") {
    preview = h("p", { class: "notice", role: "status" }, "Still being stored: reload to see it.");
  } else if (type.startsWith("image/")) {
    preview = h("img", { class: "attachment-image", src, alt: name, loading: "lazy" });
  } else if (type.startsWith("audio/")) {
    preview = h("audio", { controls: true, preload: "metadata", src, "aria-label": name });
  } else if (type.startsWith("video/")) {
    preview = h("video", { controls: true, preload: "metadata", src, "aria-label": name });
  } else if (type === "application/pdf") {
    preview = h("object", {
      class: "attachment-pdf", data: src, type: "application/pdf", "aria-label": name,
    }, h("a", { href: src, target: "_blank", rel: "noopener" }, `Open ${name}`));
  } else if (type.startsWith("text/") || type === "application/json") {
    preview = textPreview(src, name);
  }
  return h("figure", { class: "attachment", "aria-label": `attachment ${name}` },
    preview,
    h("figcaption", {},
      h("span", { class: "attachment-name", text: name }),
      h("span", { class: "attachment-type", text: type }),
      Number.isFinite(state.size) ? h("span", { class: "attachment-type", text: bytes(state.size) }) : null,
      h("a", {
        class: "button small", href: attachmentUrl(ref.key, true), download: name,
        "aria-label": `Download ${name}`,
      }, glyph("download"), "Download")));
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** Text attachments: shown on demand, as text (never as HTML). */
function textPreview(src, name) {
  const box = h("div", { class: "attachment-text" });
  const button = h("button", { type: "button", class: "small" }, `Show ${name}`);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const response = await fetch(src, { credentials: "same-origin" });
      const text = await response.text();
      box.replaceChildren(h("pre", { class: "json-text" },
        text.length > 65536 ? `${text.slice(0, 65536)}\n…` : text));
    } catch (err) {
      box.replaceChildren(h("p", { class: "notice notice-error" }, String(err.message)));
    }
  });
  box.append(button);
  return box;
}

/** An external attachment: a link out (http(s) only). */
export function externalAttachmentView(ref) {
  const url = safeHttpUrl(ref.url);
  const name = String(ref.filename || ref.url);
  return h("figure", { class: "attachment external", "aria-label": `external attachment ${name}` },
    h("figcaption", {},
      url ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer" },
        glyph("external"), name) : h("span", { text: name }),
      ref.content_type ? h("span", { class: "attachment-type", text: ref.content_type }) : null,
      h("span", { class: "attachment-kind", text: "external" })));
}

/** An attachment reference where it sits in a value: a compact chip (name, type, download or
 * link out); the previews are in the span's Attachments section. */
export function attachmentChip(ref) {
  const external = isExternalAttachment(ref);
  const name = String(ref.filename || ref.key || ref.url);
  const url = external ? safeHttpUrl(ref.url) : attachmentUrl(ref.key, true);
  const chip = h("span", { class: "attachment-chip" },
    h("span", { class: "attachment-kind", text: external ? "external attachment" : "attachment" }),
    h("span", { class: "attachment-name", text: name }),
    ref.content_type ? h("span", { class: "attachment-type", text: String(ref.content_type) }) : null);
  if (url) {
    chip.append(external
      ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer", "aria-label": `Open ${name}` }, glyph("external"))
      : h("a", { href: url, download: name, "aria-label": `Download ${name} (inline)` }, glyph("download")));
  }
  return chip;
}

/** Every attachment reference in a value (any depth), in order. */
export function findAttachments(value, found = [], depth = 0) {
  if (depth > 64 || value === null || typeof value !== "object") return found;
  if (isAttachment(value) || isExternalAttachment(value)) {
    found.push(value);
    return found;
  }
  for (const child of Array.isArray(value) ? value : Object.values(value)) {
    findAttachments(child, found, depth + 1);
  }
  return found;
}

// LLM spans as a conversation: the input's messages, then the output's (chat completions'
// choices, a Responses API output, a plain string), with roles, text and image parts and tool
// calls. Anything it does not recognise is left to the JSON viewer.

import { h } from "./dom.js";
import { jsonView } from "./json_view.js";
import { inlineImage, isImageString } from "./media.js";

function isObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** Whether `value` is a list of chat messages ({role, ...}). */
export function isMessages(value) {
  return Array.isArray(value) && value.length > 0 &&
    value.every((m) => isObject(m) && typeof m.role === "string");
}

/** The output of an LLM span as messages, or null when it is not one of the known shapes. */
export function outputMessages(output) {
  if (typeof output === "string") return [{ role: "assistant", content: output }];
  if (isMessages(output)) return output;
  if (isObject(output)) {
    if (typeof output.role === "string") return [output];
    if (Array.isArray(output.choices)) return outputMessages(output.choices);
    if (Array.isArray(output.output)) return outputMessages(output.output);
    return null;
  }
  if (!Array.isArray(output) || output.length === 0) return null;
  if (output.every((c) => isObject(c) && isObject(c.message))) {
    return output.map((c) => ({ ...c.message, finish_reason: c.finish_reason }));
  }
  if (output.every((item) => isObject(item) && typeof item.type === "string")) {
    const messages = [];
    for (const item of output) {
      if (item.type === "message") {
        messages.push({ role: item.role || "assistant", content: item.content });
      } else if (item.type === "function_call") {
        messages.push({
          role: "assistant",
          tool_calls: [{ id: item.call_id, function: { name: item.name, arguments: item.arguments } }],
        });
      } else if (item.type === "reasoning") {
        messages.push({ role: "reasoning", content: item.summary || item.content || "" });
      } else {
        return null;
      }
    }
    return messages;
  }
  return null;
}

/** The conversation of an LLM span, or null when its input is not a list of messages. */
export function conversationView(input, output) {
  if (!isMessages(input)) return null;
  const outMessages = output === undefined || output === null ? [] : outputMessages(output);
  const list = h("ol", { class: "chat", "aria-label": "Conversation" });
  for (const m of input) list.append(messageView(m, false));
  if (outMessages) for (const m of outMessages) list.append(messageView(m, true));
  else list.append(h("li", { class: "msg msg-raw" },
    h("header", { class: "msg-role", text: "output" }), jsonView(output)));
  return list;
}

function messageView(message, isOutput) {
  const role = String(message.role);
  const item = h("li", {
    class: `msg msg-${role.replace(/[^a-z_-]/gi, "")}${isOutput ? " msg-output" : ""}`,
    "aria-label": `${role} message`,
  });
  const header = h("header", {}, h("span", { class: "msg-role", text: role }));
  if (message.name) header.append(h("span", { class: "msg-name", text: String(message.name) }));
  if (message.tool_call_id) {
    header.append(h("span", { class: "msg-meta", text: `tool call ${message.tool_call_id}` }));
  }
  if (isOutput) header.append(h("span", { class: "msg-meta", text: "output" }));
  if (message.finish_reason) {
    header.append(h("span", { class: "msg-meta", text: `finish: ${message.finish_reason}` }));
  }
  item.append(header);
  if (message.content !== undefined && message.content !== null && message.content !== "") {
    item.append(contentView(message.content));
  }
  if (Array.isArray(message.tool_calls)) {
    for (const call of message.tool_calls) item.append(toolCallView(call));
  } else if (isObject(message.function_call)) {
    item.append(toolCallView({ function: message.function_call }));
  }
  if (message.refusal) item.append(h("p", { class: "msg-refusal", text: String(message.refusal) }));
  return item;
}

function contentView(content) {
  if (typeof content === "string") return h("div", { class: "msg-text", text: content });
  if (!Array.isArray(content)) return jsonView(content);
  const box = h("div", { class: "msg-parts" });
  for (const part of content) {
    if (typeof part === "string") box.append(h("div", { class: "msg-text", text: part }));
    else if (isObject(part) && typeof part.text === "string") {
      box.append(h("div", { class: "msg-text", text: part.text }));
    } else if (isObject(part) && part.type === "image_url" && part.image_url) {
      const url = typeof part.image_url === "string" ? part.image_url : part.image_url.url;
      box.append((typeof url === "string" && isImageString(url, { underImageUrl: true }) &&
        inlineImage(url)) || jsonView(part));
    } else if (isObject(part) && part.type === "input_image" && typeof part.image_url === "string") {
      box.append(inlineImage(part.image_url) || jsonView(part));
    } else {
      box.append(jsonView(part));
    }
  }
  return box;
}

function toolCallView(call) {
  const fn = isObject(call.function) ? call.function : call;
  const name = String(fn.name || "tool call");
  let args = fn.arguments;
  if (typeof args === "string") {
    try {
      args = JSON.parse(args);
    } catch {
      // shown as the string it is
    }
  }
  return h("div", { class: "tool-call", "aria-label": `tool call ${name}` },
    h("div", { class: "tool-call-name" }, h("span", { class: "tool-call-label", text: "tool call" }),
      h("code", { text: name }), call.id ? h("span", { class: "msg-meta", text: call.id }) : null),
    args === undefined ? null : jsonView(args));
}

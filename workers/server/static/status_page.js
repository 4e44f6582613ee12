// /status: the aggregator runs recorded in the store and their counters (what `tracer stats`
// shows), refreshed every 5 s.

import { api } from "./api.js";
import { h, notice } from "./dom.js";
import * as fmt from "./format.js";
import { crumbs, title } from "./pages.js";

const MAIN_COUNTERS = ["rows_committed", "records", "batches_committed", "queue_depth",
  "senders_seen", "live_senders", "attachments_stored"];

export function statusPage(main) {
  crumbs(["Status"]);
  title("Status");
  const body = h("div", {}, h("p", { class: "loading", role: "status" }, "Loading…"));
  const updated = h("p", { class: "hint", role: "status" });
  main.append(h("h1", { text: "Status" }),
    h("p", { class: "subtitle", text: "The aggregator runs that wrote this store, and their counters." }),
    updated, body);
  let timer = 0;
  const controller = new AbortController();
  const load = async () => {
    try {
      const { runs } = await api.stats({ signal: controller.signal });
      body.replaceChildren(runs.length ? runsView(runs) : notice("No aggregator has run on this store yet."));
      updated.textContent = `Updated ${fmt.time(Date.now() / 1000)}`;
    } catch (err) {
      if (err.name === "AbortError") return;
      body.replaceChildren(notice(`Could not load the counters: ${err.message}`, "error"));
    }
    timer = setTimeout(load, 5000);
  };
  load();
  return { destroy: () => { clearTimeout(timer); controller.abort(); } };
}

const when = fmt.when;

function runsView(runs) {
  return h("div", { class: "runs" }, runs.map((run) => {
    // The run's snapshot: its counters (nested under "counters") beside queue and process facts.
    const snapshot = run.counters || {};
    const c = {};
    for (const [k, v] of Object.entries(snapshot)) {
      if (k === "counters" && v && typeof v === "object") Object.assign(c, v);
      else if (!["run_id", "pid", "host", "endpoint", "store"].includes(k)) c[k] = v;
    }
    const state = run.ended ? `ended ${when(run.ended)}` : "running (or stopped without recording its end)";
    const where = snapshot.store;
    const main = MAIN_COUNTERS.filter((k) => c[k] !== undefined);
    const dropped = Object.entries(c).filter(([k, v]) => /dropped|failed|rejected/.test(k) &&
      v && (typeof v !== "object" || Object.keys(v).length));
    return h("article", { class: "run", "aria-label": `run ${run.run_id}` },
      h("h2", {}, h("span", { text: `Run ${String(run.run_id).slice(0, 12)}` }),
        h("span", { class: `badge ${run.ended ? "" : "badge-running"}`, text: run.ended ? "ended" : "live" })),
      h("dl", { class: "facts inline" },
        [["pid", run.pid], ["host", run.host], ["endpoint", run.endpoint],
          ["store", where], ["started", when(run.started)], ["updated", when(run.updated)],
          ["state", state]]
          .filter(([, v]) => v !== undefined && v !== null && v !== "")
          .map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: String(v) })))),
      main.length ? h("div", { class: "counter-cards" }, main.map((k) =>
        h("div", { class: "counter-card" }, h("span", { class: "counter-value", text: fmt.number(typeof c[k] === "number" ? c[k] : JSON.stringify(c[k])) }),
          h("span", { class: "counter-name", text: k })))) : null,
      dropped.length ? notice(`Dropped: ${dropped.map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ")}`, "warn") : null,
      h("details", { class: "all-counters" }, h("summary", { text: `All counters (${Object.keys(c).length})` }),
        h("table", { class: "kv" }, h("tbody", {}, Object.entries(c).map(([k, v]) =>
          h("tr", {}, h("th", { scope: "row", text: k }),
            h("td", { text: typeof v === "number" ? fmt.number(v) : JSON.stringify(v) })))))));
  }));
}

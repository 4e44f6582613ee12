// A trace's spans as a tree beside a timeline (waterfall), virtualised: whatever the number of
// spans, only the rows in view (and a few around them) exist in the DOM, at a fixed row height,
// in a scroller whose height stands for all of them. Spans are indexed once (O(n)); expanding or
// collapsing flattens the visible tree again (O(visible rows)).
//
// A span with several parents appears under each of them, marked; the tree's rows are
// (span, parent) occurrences. Cycles in malformed data are cut.

import { h } from "./dom.js";
import * as fmt from "./format.js";
import { glyph, typeIcon } from "./icons.js";

export const ROW_HEIGHT = 26;
const OVERSCAN = 12;
const MAX_ROWS = 1_000_000; // a scroller's height must stay within what browsers can draw
const INDENT = 14;

export class TraceTree {
  /** spans: the skeleton's spans, ordered by start; onSelect(spanIndex) on user selection. */
  constructor(spans, { onSelect }) {
    this.spans = spans;
    this.onSelect = onSelect;
    this.index = new Map();
    this.kids = new Array(spans.length);
    this.knownParents = new Uint32Array(spans.length);
    this.collapsed = new Uint8Array(spans.length);
    this.roots = [];
    this.selected = -1; // a row index
    this.selectedSpan = -1;
    this.pool = [];
    this.version = 0;
    this.frame = 0;
    this.buildIndex();
    this.buildScale();
    this.buildDom();
    this.flatten();
  }

  buildIndex() {
    const { spans, index, kids } = this;
    for (let i = 0; i < spans.length; i++) index.set(spans[i].span_id, i);
    for (let i = 0; i < spans.length; i++) {
      const parents = spans[i].parents;
      let known = 0;
      if (parents) {
        for (const p of parents) {
          const j = index.get(p);
          if (j === undefined || j === i) continue;
          (kids[j] || (kids[j] = [])).push(i);
          known++;
        }
      }
      this.knownParents[i] = known;
      if (known === 0) this.roots.push(i);
    }
  }

  buildScale() {
    let t0 = Infinity;
    let t1 = -Infinity;
    for (const s of this.spans) {
      if (Number.isFinite(s.start)) {
        if (s.start < t0) t0 = s.start;
        if (s.start > t1) t1 = s.start;
      }
      if (Number.isFinite(s.end) && s.end > t1) t1 = s.end;
    }
    if (!Number.isFinite(t0)) { t0 = 0; t1 = 1; }
    this.t0 = t0;
    this.total = Math.max(t1 - t0, 1e-6);
  }

  buildDom() {
    this.spacer = h("div", { class: "tree-spacer" });
    this.viewport = h("div", {
      class: "tree-viewport", role: "tree", tabindex: "0", "aria-label": "Span tree",
    }, this.spacer);
    const ticks = h("div", { class: "timeline-ticks", "aria-hidden": "true" });
    for (let i = 0; i <= 4; i++) {
      const tick = h("span", { class: "tick", text: fmt.duration((this.total * i) / 4) });
      tick.style.left = `${i * 25}%`;
      ticks.append(tick);
    }
    this.el = h("div", { class: "trace-tree" },
      h("div", { class: "tree-head" }, h("span", { class: "tree-head-name", text: "Span" }),
        h("span", { class: "tree-head-timeline" }, h("span", { class: "sr-only", text: "Timeline" }), ticks)),
      this.viewport);
    this.viewport.addEventListener("scroll", () => this.schedule(), { passive: true });
    this.viewport.addEventListener("keydown", (e) => this.onKey(e));
    this.viewport.addEventListener("click", (e) => this.onClick(e));
    if (typeof ResizeObserver !== "undefined") {
      this.resize = new ResizeObserver(() => this.schedule());
      this.resize.observe(this.viewport);
    }
  }

  /** The visible rows: parallel arrays of span index, depth and parent span index. */
  flatten() {
    const rowSpan = [];
    const rowDepth = [];
    const rowParent = [];
    const onPath = new Uint8Array(this.spans.length);
    const stack = [];
    const { roots, kids, collapsed } = this;
    for (let r = roots.length - 1; r >= 0; r--) stack.push(roots[r], 0, -1);
    while (stack.length) {
      const parent = stack.pop();
      const depth = stack.pop();
      const idx = stack.pop();
      if (idx < 0) { onPath[-1 - idx] = 0; continue; }
      if (onPath[idx]) continue; // a cycle: cut
      rowSpan.push(idx); rowDepth.push(depth); rowParent.push(parent);
      if (rowSpan.length >= MAX_ROWS) break;
      const k = kids[idx];
      if (k && !collapsed[idx]) {
        onPath[idx] = 1;
        stack.push(-1 - idx, 0, 0);
        for (let c = k.length - 1; c >= 0; c--) stack.push(k[c], depth + 1, idx);
      }
    }
    this.rowSpan = rowSpan;
    this.rowDepth = rowDepth;
    this.rowParent = rowParent;
    this.spacer.style.height = `${rowSpan.length * ROW_HEIGHT}px`;
    this.version++;
    this.viewport.setAttribute("aria-rowcount", String(rowSpan.length));
    this.schedule();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  /** Draw the rows in view now (also called directly so a first paint needs no frame). */
  render() {
    const top = this.viewport.scrollTop;
    const height = this.viewport.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.rowSpan.length, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
    const needed = last - first;
    while (this.pool.length < needed) {
      const row = this.makeRow();
      this.pool.push(row);
      this.viewport.append(row.el);
    }
    for (let k = 0; k < this.pool.length; k++) {
      const row = this.pool[k];
      const i = first + k;
      if (i < last) {
        row.el.hidden = false;
        if (row.index !== i || row.version !== this.version) this.fillRow(row, i);
      } else if (!row.el.hidden) {
        row.el.hidden = true;
        row.index = -1;
      }
    }
    const active = this.selected >= first && this.selected < last ? `tree-row-${this.selected}` : null;
    if (active) this.viewport.setAttribute("aria-activedescendant", active);
    else this.viewport.removeAttribute("aria-activedescendant");
  }

  makeRow() {
    const toggle = h("button", { type: "button", class: "toggle", tabindex: "-1" });
    const icon = h("span", { class: "row-icon" });
    const name = h("span", { class: "row-name" });
    const marks = h("span", { class: "row-marks" });
    const dur = h("span", { class: "row-duration" });
    const label = h("div", { class: "row-label" }, toggle, icon, name, marks, dur);
    const bar = h("div", { class: "bar" });
    const timeline = h("div", { class: "row-timeline", "aria-hidden": "true" }, bar);
    const el = h("div", { class: "tree-row", role: "treeitem" }, label, timeline);
    return { el, toggle, icon, name, marks, dur, bar, label, index: -1, version: -1, type: null };
  }

  fillRow(row, i) {
    const idx = this.rowSpan[i];
    const span = this.spans[idx];
    const depth = this.rowDepth[i];
    const hasKids = !!this.kids[idx];
    row.index = i;
    row.version = this.version;
    row.el.id = `tree-row-${i}`;
    row.el.dataset.row = String(i);
    row.el.style.transform = `translateY(${i * ROW_HEIGHT}px)`;
    row.el.setAttribute("aria-level", String(depth + 1));
    row.el.setAttribute("aria-selected", String(i === this.selected));
    row.el.classList.toggle("selected", i === this.selected);
    row.el.classList.toggle("has-error", !!span.error);
    row.el.classList.toggle("is-running", !!span.running);
    if (hasKids) row.el.setAttribute("aria-expanded", String(!this.collapsed[idx]));
    else row.el.removeAttribute("aria-expanded");
    row.label.style.paddingLeft = `${depth * INDENT + 4}px`;
    row.toggle.hidden = !hasKids;
    if (hasKids) {
      row.toggle.replaceChildren(glyph(this.collapsed[idx] ? "chevronRight" : "chevronDown"));
      row.toggle.setAttribute("aria-label", `${this.collapsed[idx] ? "Expand" : "Collapse"} ${span.name}`);
    }
    if (row.type !== span.type) {
      row.icon.replaceChildren(typeIcon(span.type));
      row.type = span.type;
    }
    row.name.textContent = span.name || "(unnamed)";
    row.marks.replaceChildren();
    if (span.error) row.marks.append(glyph("error", "error"));
    if (span.running) row.marks.append(glyph("running", "running"));
    if (this.knownParents[idx] > 1) {
      const others = span.parents.filter((p) => p !== this.spans[this.rowParent[i]]?.span_id)
        .map((p) => this.nameOf(p));
      row.marks.append(h("span", {
        class: "multi-parent", title: `also under: ${others.join(", ")}`,
      }, glyph("parents", `${this.knownParents[idx]} parents`)));
    }
    const end = Number.isFinite(span.end) ? span.end : null;
    row.dur.textContent = span.running ? "running" : end !== null ? fmt.duration(end - span.start) : "";
    const left = ((span.start - this.t0) / this.total) * 100;
    const width = (((end ?? this.t0 + this.total) - span.start) / this.total) * 100;
    row.bar.style.left = `${Math.max(0, Math.min(100, left))}%`;
    row.bar.style.width = `${Math.max(0.3, Math.min(100 - Math.max(0, left), width))}%`;
    row.bar.className = `bar type-${span.type || "none"}${span.error ? " error" : ""}${span.running ? " running" : ""}`;
  }

  nameOf(spanId) {
    const j = this.index.get(spanId);
    return j === undefined ? spanId : this.spans[j].name;
  }

  onClick(event) {
    const rowEl = event.target.closest(".tree-row");
    if (!rowEl) return;
    const i = Number(rowEl.dataset.row);
    if (event.target.closest(".toggle")) {
      this.toggle(i);
      return;
    }
    this.selectRow(i, { notify: true });
    this.viewport.focus({ preventScroll: true });
  }

  onKey(event) {
    const n = this.rowSpan.length;
    if (!n) return;
    let i = this.selected < 0 ? 0 : this.selected;
    const idx = this.rowSpan[i];
    switch (event.key) {
      case "ArrowDown": i = Math.min(n - 1, i + 1); break;
      case "ArrowUp": i = Math.max(0, i - 1); break;
      case "Home": i = 0; break;
      case "End": i = n - 1; break;
      case "PageDown": i = Math.min(n - 1, i + Math.floor(this.viewport.clientHeight / ROW_HEIGHT)); break;
      case "PageUp": i = Math.max(0, i - Math.floor(this.viewport.clientHeight / ROW_HEIGHT)); break;
      case "ArrowRight":
        if (this.kids[idx] && this.collapsed[idx]) { this.toggle(i); event.preventDefault(); return; }
        if (this.kids[idx]) i = Math.min(n - 1, i + 1);
        break;
      case "ArrowLeft":
        if (this.kids[idx] && !this.collapsed[idx]) { this.toggle(i); event.preventDefault(); return; }
        i = this.parentRow(i);
        break;
      case "Enter": case " ":
        if (this.kids[idx]) this.toggle(i);
        event.preventDefault();
        return;
      default: return;
    }
    event.preventDefault();
    this.selectRow(i, { notify: true, scroll: true });
  }

  parentRow(i) {
    const depth = this.rowDepth[i];
    for (let j = i - 1; j >= 0; j--) if (this.rowDepth[j] < depth) return j;
    return i;
  }

  /** Collapse or expand the span of row i (every occurrence of it). */
  toggle(i) {
    const idx = this.rowSpan[i];
    if (!this.kids[idx]) return;
    const selectedSpan = this.selected >= 0 ? this.rowSpan[this.selected] : -1;
    const selectedParent = this.selected >= 0 ? this.rowParent[this.selected] : -1;
    this.collapsed[idx] = this.collapsed[idx] ? 0 : 1;
    this.flatten();
    this.selected = selectedSpan < 0 ? -1 : this.findRow(selectedSpan, selectedParent);
    if (this.selected < 0 && selectedSpan >= 0) this.selected = i; // it was hidden: the collapsed row
    this.render();
  }

  setAll(collapsed) {
    for (let i = 0; i < this.spans.length; i++) this.collapsed[i] = collapsed && this.kids[i] ? 1 : 0;
    const span = this.selectedSpan;
    this.flatten();
    this.selected = span >= 0 ? this.findRow(span, -2) : -1;
    this.render();
  }

  findRow(idx, parent) {
    let fallback = -1;
    for (let i = 0; i < this.rowSpan.length; i++) {
      if (this.rowSpan[i] === idx) {
        if (parent === -2 || this.rowParent[i] === parent) return i;
        if (fallback < 0) fallback = i;
      }
    }
    return fallback;
  }

  selectRow(i, { notify = false, scroll = false, center = false } = {}) {
    this.selected = i;
    this.selectedSpan = this.rowSpan[i];
    this.version++;
    if (scroll) this.scrollToRow(i, center);
    this.render();
    if (notify) this.onSelect(this.rowSpan[i]);
  }

  /** Select span `spanId` (expanding its ancestors if needed); false if it is not in the trace. */
  selectSpan(spanId, { center = true } = {}) {
    const idx = this.index.get(spanId);
    if (idx === undefined) return false;
    let i = this.findRow(idx, -2);
    if (i < 0) {
      // Hidden under a collapsed ancestor: open the first-parent chain.
      let j = idx;
      for (let guard = 0; guard < this.spans.length; guard++) {
        const p = this.spans[j].parents && this.spans[j].parents.find((x) => this.index.has(x));
        if (!p) break;
        j = this.index.get(p);
        this.collapsed[j] = 0;
      }
      this.flatten();
      i = this.findRow(idx, -2);
    }
    if (i < 0) return false;
    this.selectRow(i, { scroll: true, center });
    return true;
  }

  scrollToRow(i, center = false) {
    const vp = this.viewport;
    const top = i * ROW_HEIGHT;
    const height = vp.clientHeight || 600;
    if (center) vp.scrollTop = Math.max(0, top - height / 2 + ROW_HEIGHT / 2);
    else if (top < vp.scrollTop) vp.scrollTop = top;
    else if (top + ROW_HEIGHT > vp.scrollTop + height) vp.scrollTop = top + ROW_HEIGHT - height;
  }

  destroy() {
    if (this.frame) cancelAnimationFrame(this.frame);
    if (this.resize) this.resize.disconnect();
  }
}

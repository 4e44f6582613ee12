// Formatting of durations, times and numbers.

/** Seconds as a short human duration: 12 µs, 3.4 ms, 1.25 s, 2 m 5 s. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  const s = Math.max(0, seconds);
  if (s < 1e-3) return `${Math.round(s * 1e6)} µs`;
  if (s < 1) {
    const ms = s * 1e3;
    return `${ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : ms.toFixed(0)} ms`;
  }
  if (s < 60) return `${s.toFixed(2)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${Math.round(s - m * 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} m`;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** Epoch seconds as local "YYYY-MM-DD HH:MM:SS". */
export function time(epoch) {
  if (epoch === null || epoch === undefined || !Number.isFinite(epoch)) return "";
  const d = new Date(epoch * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Epoch seconds or an ISO timestamp as local "YYYY-MM-DD HH:MM:SS". */
export function when(value) {
  if (value === null || value === undefined || value === "") return "";
  if (typeof value === "number") return time(value);
  const t = Date.parse(String(value));
  return Number.isFinite(t) ? time(t / 1000) : String(value);
}

/** Epoch seconds (or an ISO string) as an ISO timestamp, for title attributes. */
export function iso(epoch) {
  if (typeof epoch === "string") return epoch;
  if (epoch === null || epoch === undefined || !Number.isFinite(epoch)) return "";
  return new Date(epoch * 1000).toISOString();
}

/** A number with at most 4 significant digits (integers whole, with separators). */
export function number(n) {
  if (n === null || n === undefined) return "";
  if (typeof n !== "number") return String(n);
  if (Number.isInteger(n)) return n.toLocaleString("en-US");
  if (Math.abs(n) >= 1000) return Math.round(n).toLocaleString("en-US");
  return String(Number(n.toPrecision(4)));
}

/** A score in [0, 1] as a percentage. */
export function score(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return `${Number((value * 100).toFixed(1))}%`;
}

/** A signed difference of scores, in percentage points. */
export function delta(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const pts = value * 100;
  const sign = pts > 0 ? "+" : pts < 0 ? "−" : "±";
  return `${sign}${Math.abs(pts).toFixed(1)} pts`;
}

/** "1 span" / "3 spans". */
export function plural(n, word, many = `${word}s`) {
  return `${number(n)} ${n === 1 ? word : many}`;
}

/** A value as compact one-line text (for table cells): strings as they are, else JSON. */
export function brief(value, max = 160) {
  let text;
  if (value === null || value === undefined) return "";
  if (typeof value === "string") text = value;
  else {
    try {
      text = JSON.stringify(value);
    } catch {
      text = String(value);
    }
  }
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** A datetime-local input's value as epoch seconds, and back. */
export function fromLocalInput(value) {
  if (!value) return null;
  const t = new Date(value).getTime();
  return Number.isFinite(t) ? Math.floor(t / 1000) : null;
}

export function toLocalInput(epoch) {
  if (epoch === null || epoch === undefined || epoch === "") return "";
  const d = new Date(Number(epoch) * 1000);
  if (!Number.isFinite(d.getTime())) return "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

// The potluck dashboard: polls /api/state (this node's status, peers, history) every second and
// redraws in place. Read-only; no network access beyond the node that served this page.
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);
const short = (hex, n = 12) => (hex ? hex.slice(0, n) : "-");
// what the page saw between polls: failed attempts and close reasons by round (the history keeps commits only)
const seen = { failed: 0, attempts: 0, rounds: {} };
let last = null;

function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function ago(t) {
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 60 ? `${s.toFixed(0)}s ago` : s < 3600 ? `${(s / 60).toFixed(0)}m ago` : `${(s / 3600).toFixed(1)}h ago`;
}

function rows(id, items, cells) {
  $(id).innerHTML = items.map((item) => "<tr>" + cells(item).map((c) => `<td>${c}</td>`).join("") + "</tr>").join("");
}

function remember(s) {
  const r = s.round;
  const entry = (seen.rounds[r] = seen.rounds[r] || { errors: [], close: "", attempts: 0 });
  if (s.aggregation && s.aggregation.close_reason) entry.close = s.aggregation.close_reason;
  if (last !== null) entry.attempts += Math.max(0, s.attempts - seen.attempts);
  if (s.failed_attempts > seen.failed && last !== null && s.round_error) entry.errors.push(s.round_error);
  seen.failed = s.failed_attempts;
  seen.attempts = s.attempts;
}

function drawCurve(rounds) {
  const points = rounds.filter((r) => r.accuracy !== null && r.accuracy >= 0);
  $("curve-points").textContent = `(${points.length} evaluated version${points.length === 1 ? "" : "s"})`;
  $("curve").dataset.points = points.length;
  if (points.length === 0) { $("curve").innerHTML = '<text x="10" y="20">no evaluated version yet</text>'; return; }
  // the drawing is as wide as the element: text keeps its shape at any window size
  const svg = $("curve"), width = Math.max(300, svg.clientWidth), height = 180;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const xs = points.map((p) => p.round), ys = points.map((p) => p.accuracy);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const px = (x) => 50 + (x1 > x0 ? ((x - x0) / (x1 - x0)) * (width - 90) : (width - 90) / 2);
  const py = (y) => height - 20 - (y1 > y0 ? ((y - y0) / (y1 - y0)) * (height - 40) : (height - 40) / 2);
  const line = points.map((p) => `${px(p.round).toFixed(1)},${py(p.accuracy).toFixed(1)}`).join(" ");
  svg.innerHTML =
    `<polyline points="${line}"/>` +
    points.map((p) => `<circle cx="${px(p.round).toFixed(1)}" cy="${py(p.accuracy).toFixed(1)}" r="3.5"><title>round ${p.round}: ${p.accuracy.toFixed(4)}</title></circle>`).join("") +
    `<text x="4" y="${py(y1) + 4}">${y1.toFixed(4)}</text><text x="4" y="${py(y0) + 4}">${y0.toFixed(4)}</text>` +
    `<text x="${px(x0) - 10}" y="${height - 4}">round ${x0}</text>` + (x1 > x0 ? `<text x="${px(x1) - 30}" y="${height - 4}">round ${x1}</text>` : "");
}

// the version download under way: bytes in of bytes needed (the target grows as holders name sizes)
function drawSync(sync) {
  $("sync").dataset.version = (sync && sync.version) || "";
  if (!sync || !sync.version) {
    $("sync").textContent = "idle";
    $("sync-detail").textContent = sync && sync.downloaded_bytes ? `${bytes(sync.downloaded_bytes)} so far` : "";
    return;
  }
  const pct = sync.target_bytes ? ` (${Math.min(100, (100 * sync.bytes) / sync.target_bytes).toFixed(0)}%)` : "";
  $("sync").textContent = `${bytes(sync.bytes)} of ${sync.target_bytes ? bytes(sync.target_bytes) : "?"}${pct}`;
  $("sync-detail").textContent = `${short(sync.version)}, ${ago(sync.started).replace(" ago", "")}`;
}

function draw(state) {
  const s = state.status;
  remember(s);
  $("run").textContent = short(s.run_id || s.run, 16);
  $("round").textContent = s.round;
  $("phase").textContent = s.phase;
  const left = s.deadline ? s.deadline - Date.now() / 1000 : 0;
  $("countdown").textContent = left > 0 ? `ends in ${left.toFixed(0)}s` : "";
  $("version").textContent = short(s.version || s.model_version);
  $("version").dataset.version = s.version || "";
  $("committed").textContent = s.committed_round >= 0 ? `(round ${s.committed_round})` : "";
  $("peers").textContent = s.peers;
  drawSync(s.sync);
  $("score").textContent = s.accuracy >= 0 ? s.accuracy.toFixed(4) : "not evaluated";
  $("last-error").textContent = s.round_error || "";
  drawCurve(state.rounds);
  const committed = state.rounds.slice().reverse();
  rows("rounds", committed, (r) => {
    const extra = seen.rounds[r.round] || { errors: [], close: "", attempts: 0 };
    return [r.round, `<span class="mono">${short(r.version)}</span>`, ago(r.time), r.updates, r.contributors,
      r.signatures, esc(extra.close || "-"), extra.attempts || "-", extra.errors.length ? esc(`${extra.errors.length}: ${extra.errors.at(-1)}`) : "0"];
  });
  rows("contributors", state.contributors, (c) => [`<span class="mono" title="${esc(c.node_id)}">${short(c.node_id, 16)}</span>`,
    c.rounds, c.last_round >= 0 ? c.last_round : "-", c.updates ? bytes(c.bytes) : "-", c.updates ? c.samples : "-",
    c.weight === null ? "?" : c.updates ? c.weight : "-", esc(c.ban || "-"), c.probation_rounds_left || "-"]);
  const held = state.contributions || { not_held: 0, pending: 0 };
  $("contributions-note").textContent = [
    held.not_held ? `${held.not_held} merged update(s) not held here: in nobody's bytes` : "",
    held.pending ? `reading the updates of ${held.pending} more round(s)` : "",
  ].filter(Boolean).join("; ");
  rows("peer-list", state.peers, (p) => [`<span class="mono" title="${esc(p.node_id)}">${short(p.node_id, 16)}</span>`,
    esc(p.role), p.round, `<span class="mono">${short(p.model_version)}</span>`, ago(p.last_seen),
    p.addrs.length ? `<span class="ok">${p.addrs.length} address${p.addrs.length === 1 ? "" : "es"}</span>` : "none (client)"]);
  const rejected = Object.entries(s.rejected_updates).filter(([, n]) => n > 0).sort();
  rows("rejections", rejected.length ? rejected : [["none", 0]], ([k, n]) => [esc(k), n]);
  const kinds = Object.entries((s.traffic && s.traffic.kinds) || {}).filter(([, v]) => v.sent + v.recv > 0);
  rows("traffic", kinds, ([k, v]) => [esc(k), bytes(v.sent), bytes(v.recv)]);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  last = state;
}

async function poll() {
  try {
    const response = await fetch("api/state", { cache: "no-store" });
    if (!response.ok) throw new Error(`${response.status} ${(await response.text()).trim()}`);
    draw(await response.json());
    $("connection").textContent = "live";
    $("connection").className = "ok";
  } catch (e) {
    $("connection").textContent = `not answering (${e.message})`;
    $("connection").className = "error";
  }
  setTimeout(poll, POLL_MS);
}

poll();

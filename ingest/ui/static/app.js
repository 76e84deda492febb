// The dashboard: fetches /api/v1/ and draws every chart as inline SVG (no library).
"use strict";

const API = "/api/v1";
const COLORS = ["#3457d5", "#e8590c", "#2f9e44", "#c2255c", "#7048e8", "#0c8599",
  "#e67700", "#5c940d", "#862e9c", "#495057"];
const SVG = "http://www.w3.org/2000/svg";
const state = { since: "1h", until: null, timer: null };

const $ = (id) => document.getElementById(id);
const fmt = (n, digits = 0) => n === null || n === undefined ? "-" :
  Number(n).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
// Latencies as the API gives them (3 decimals at most), so what is shown is the answer.
const exact = (n) => n === null || n === undefined ? "-" :
  Number(n).toLocaleString("en-US", { maximumFractionDigits: 3 });
const ms = (n) => n === null || n === undefined ? "-" : exact(n) + " ms";
const usd = (n) => n === null || n === undefined ? "-" : "$" + fmt(n, 4);
const pct = (n) => n === null || n === undefined ? "-" : fmt(n * 100, 2) + " %";

function windowParams(extra = {}) {
  const p = new URLSearchParams();
  p.set("since", state.since);
  if (state.until) p.set("until", state.until);
  for (const [k, v] of Object.entries(extra)) if (v !== "" && v !== null) p.set(k, v);
  return p;
}

async function get(path, params) {
  const response = await fetch(`${API}${path}?${params}`, { credentials: "same-origin" });
  if (response.status === 401) { window.location.assign("/ui/login"); throw new Error("log in"); }
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || body.error || `HTTP ${response.status}`);
  return body;
}

function el(tag, attrs = {}, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) :
    document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// A colour per name, kept from first sight: the same model looks the same in every panel,
// whichever panel answers first.
const colors = new Map([["p50", COLORS[0]], ["p95", COLORS[1]], ["p99", COLORS[2]]]);
function color(name) {
  if (!colors.has(name)) colors.set(name, COLORS[(colors.size - 3) % COLORS.length]);
  return colors.get(name);
}

function legend(target, names) {
  const box = el("div", { class: "legend" });
  for (const name of names) {
    const item = el("span");
    const swatch = el("i");
    swatch.style.background = color(name);
    item.append(swatch, document.createTextNode(name));
    box.append(item);
  }
  target.before(box);
  return box;
}

function clearChart(target) {
  if (target.previousElementSibling && target.previousElementSibling.classList.contains("legend")) {
    target.previousElementSibling.remove();
  }
  target.replaceChildren();
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= value) return m * power;
  return 10 * power;
}

function timeLabel(iso, stepMs) {
  const d = new Date(iso);
  if (stepMs >= 86400000) return d.toLocaleDateString([], { month: "short", day: "numeric" });
  if (stepMs >= 3600000) return d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit" });
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// A frame of axes; returns the plotting geometry.
function frame(svg, width, height, yMax, yFormat, labels) {
  const left = 56, right = 8, top = 8, bottom = 22;
  const g = { left, top, w: width - left - right, h: height - top - bottom };
  for (let i = 0; i <= 4; i++) {
    const y = top + g.h - (g.h * i) / 4;
    svg.append(el("svg:line", { x1: left, x2: width - right, y1: y, y2: y, class: "axis" }));
    svg.append(el("svg:text", { x: left - 6, y: y + 4, "text-anchor": "end" }, yFormat((yMax * i) / 4)));
  }
  const n = labels.length;
  const shown = Math.min(n, 6);
  for (let i = 0; i < shown; i++) {
    const k = shown === 1 ? 0 : Math.round((i * (n - 1)) / (shown - 1));
    const x = left + (n === 1 ? g.w / 2 : (g.w * k) / (n - 1));
    svg.append(el("svg:text", { x, y: height - 6, "text-anchor": "middle" }, labels[k]));
  }
  return g;
}

function lineChart(target, slots, stepMs, series, yFormat) {
  clearChart(target);
  const width = target.clientWidth || 800, height = target.clientHeight || 220;
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  const all = series.flatMap((s) => s.values.filter((v) => v !== null));
  const yMax = niceMax(Math.max(0, ...all));
  const labels = slots.map((s) => timeLabel(s, stepMs));
  const g = frame(svg, width, height, yMax, yFormat, labels);
  const x = (i) => g.left + (slots.length === 1 ? g.w / 2 : (g.w * i) / (slots.length - 1));
  const y = (v) => g.top + g.h - (g.h * v) / yMax;
  for (const s of series) {
    let path = "", pen = false;
    s.values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      path += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    if (path) svg.append(el("svg:path", { d: path, fill: "none", stroke: color(s.name), "stroke-width": 1.8 }));
    s.values.forEach((v, i) => {
      if (v === null) return;
      const dot = el("svg:circle", { cx: x(i), cy: y(v), r: 2.2, fill: color(s.name) });
      dot.append(el("svg:title", {}, `${s.name} ${labels[i]}: ${yFormat(v)}`));
      svg.append(dot);
    });
  }
  target.append(svg);
  legend(target, series.map((s) => s.name));
  if (!all.length) target.append(el("p", { class: "empty" }, "no events in this window"));
}

function stackedBars(target, labels, series, yFormat) {
  clearChart(target);
  const width = target.clientWidth || 800, height = target.clientHeight || 220;
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  const sums = labels.map((_, i) => series.reduce((t, s) => t + (s.values[i] || 0), 0));
  const yMax = niceMax(Math.max(0, ...sums));
  const g = frame(svg, width, height, yMax, yFormat, labels);
  const slot = g.w / Math.max(labels.length, 1);
  labels.forEach((label, i) => {
    let base = 0;
    for (const s of series) {
      const v = s.values[i] || 0;
      if (!v) continue;
      const h = (g.h * v) / yMax;
      const bar = Math.min(slot * 0.7, 60);
      const rect = el("svg:rect", { x: g.left + (i + 0.5) * slot - bar / 2, width: bar,
        y: g.top + g.h - (g.h * base) / yMax - h, height: h, fill: color(s.name) });
      rect.append(el("svg:title", {}, `${label} ${s.name}: ${yFormat(v)}`));
      svg.append(rect);
      base += v;
    }
  });
  // Day labels sit under their bars, not on the frame's evenly spread ticks.
  svg.querySelectorAll("text[text-anchor=middle]").forEach((t) => t.remove());
  labels.forEach((label, i) => svg.append(el("svg:text", { x: g.left + (i + 0.5) * slot,
    y: height - 6, "text-anchor": "middle" }, label)));
  target.append(svg);
  legend(target, series.map((s) => s.name));
  if (!labels.length) target.append(el("p", { class: "empty" }, "no events in this window"));
}

function row(cells) {
  const tr = el("tr");
  for (const c of cells) {
    const td = el("td", c.cls ? { class: c.cls } : {}, c.text);
    if (c.value !== undefined && c.value !== null) td.dataset.value = String(c.value);
    tr.append(td);
  }
  return tr;
}

function fill(tableId, rows, empty) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
  if (!rows.length) {
    const cols = $(tableId).tHead.rows[0].cells.length;
    body.append(el("tr", {}, "")).append(el("td", { colspan: cols, class: "empty" }, empty));
  }
}

function tile(id, text, value) {
  $(id).textContent = text;
  $(id).dataset.value = value === null || value === undefined ? "" : String(value);
}

// Panels ------------------------------------------------------------------------------------
async function traffic() {
  const t = await get("/series/traffic", windowParams());
  $("models").replaceChildren(...t.by_model.map((m) => el("option", { value: m.model || "" })));
  lineChart($("c-requests"), t.slots, t.step_ms,
    t.by_model.map((m) => ({ name: m.model || "(none)", values: m.requests })), exact);
  lineChart($("c-error-rate"), t.slots, t.step_ms,
    t.by_model.map((m) => ({ name: m.model || "(none)", values: m.error_rate })), (v) => fmt(v * 100, 1) + "%");
}

async function latencySeries() {
  const s = await get("/series/latency", windowParams());
  lineChart($("c-latency"), s.slots, s.step_ms, ["p50", "p95", "p99"].map((p) => ({ name: p, values: s[p] })),
    (v) => fmt(v) + " ms");
}

async function latencyReport() {
  const r = await get("/report/latency", windowParams());
  tile("t-p50", ms(r.overall.p50), r.overall.p50);
  tile("t-p95", ms(r.overall.p95), r.overall.p95);
  tile("t-p99", ms(r.overall.p99), r.overall.p99);
  fill("latency-models", r.by_model.map((m) => row([
    { text: m.model }, { text: fmt(m.count), value: m.count, cls: "num" },
    { text: exact(m.p50), value: m.p50, cls: "num" }, { text: exact(m.p95), value: m.p95, cls: "num" },
    { text: exact(m.p99), value: m.p99, cls: "num" }])), "no latencies in this window");
  const names = Object.keys(r.buckets);
  const total = names.reduce((t, n) => t + r.buckets[n], 0);
  const head = $("buckets").tHead.rows[0], cells = $("buckets").tBodies[0].rows[0];
  head.replaceChildren(...names.map((n) => el("th", {}, n)));
  cells.replaceChildren(...names.map((n) => {
    const td = el("td", {}, `${fmt(r.buckets[n])} (${total ? fmt((100 * r.buckets[n]) / total) : 0}%)`);
    td.dataset.value = String(r.buckets[n]);
    return td;
  }));
  const target = $("c-buckets");
  clearChart(target);
  const width = target.clientWidth || 600, height = target.clientHeight || 60;
  const svg = el("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  let x = 0;
  names.forEach((n, i) => {
    const w = total ? (width * r.buckets[n]) / total : 0;
    const rect = el("svg:rect", { x, y: 8, width: w, height: height - 16, fill: COLORS[i % COLORS.length] });
    rect.append(el("svg:title", {}, `${n}: ${fmt(r.buckets[n])}`));
    svg.append(rect);
    x += w;
  });
  target.append(svg);
}

async function errors() {
  const r = await get("/report/errors", windowParams());
  tile("t-requests", fmt(r.total.requests), r.total.requests);
  tile("t-errors", fmt(r.total.errors), r.total.errors);
  tile("t-error-rate", pct(r.total.error_rate), r.total.error_rate);
  fill("errors", r.by_model.map((m) => row([
    { text: m.model || "(none)" }, { text: fmt(m.requests), value: m.requests, cls: "num" },
    { text: fmt(m.errors), value: m.errors, cls: "num" }, { text: pct(m.error_rate), value: m.error_rate, cls: "num" },
    { text: m.top_errors.map((e) => `${e.message} (${e.count})`).join("; "), cls: "error" }])),
  "no events in this window");
}

async function cost() {
  const r = await get("/report/cost", windowParams({ by: "model" }));
  tile("t-cost", usd(r.total.cost_usd), r.total.cost_usd);
  const days = [...new Set(r.rows.map((x) => x.day))];
  const models = [...new Set(r.rows.map((x) => x.model || "(none)"))];
  const series = models.map((m) => ({ name: m, values: days.map((d) => {
    const found = r.rows.find((x) => x.day === d && (x.model || "(none)") === m);
    return found ? found.cost_usd : 0;
  }) }));
  stackedBars($("c-cost"), days, series, (v) => "$" + fmt(v, v < 10 ? 2 : 0));
}

async function users() {
  const r = await get("/top-users", windowParams({ limit: 10 }));
  fill("users", r.users.map((u) => row([
    { text: u.user || "(none)" }, { text: fmt(u.requests), value: u.requests, cls: "num" },
    { text: fmt(u.errors), value: u.errors, cls: "num" }, { text: fmt(u.cost_usd, 4), value: u.cost_usd, cls: "num" },
    { text: fmt(u.computed_cost_usd, 4), value: u.computed_cost_usd, cls: "num" },
    { text: fmt(u.total_tokens), value: u.total_tokens, cls: "num" }])), "no users in this window");
}

async function quota() {
  const q = await get("/quota", new URLSearchParams());
  const box = $("quota");
  if (!q.configured) { box.hidden = true; return; }
  box.hidden = false;
  box.replaceChildren();
  const value = q.remaining === null ? "not known yet" : `${fmt(q.remaining)} / ${fmt(q.limit)}`;
  const b = el("b", { id: "quota-value" }, value);
  const when = q.last_polled ? new Date(q.last_polled).toLocaleString() : "never";
  box.append(document.createTextNode("relay quota "), b,
    document.createTextNode(` left, polled ${when}${q.state && q.state !== "ok" ? ` (${q.state})` : ""}`));
}

async function search(event) {
  if (event) event.preventDefault();
  const form = new FormData($("filters"));
  const params = windowParams(Object.fromEntries(form.entries()));
  const r = await get("/search", params);
  fill("events", r.events.map((d) => {
    const meta = d.user_metadata || {};
    const tr = row([
      { text: new Date(d["@timestamp"]).toLocaleString() }, { text: d.id }, { text: d.model || "" },
      { text: String(d.status_code ?? "") }, { text: fmt(d.latency_ms, 1), cls: "num" },
      { text: fmt(d.tokens_used), cls: "num" }, { text: d.cost_usd === undefined ? "" : fmt(d.cost_usd, 6), cls: "num" },
      { text: meta.user_id || "" }, { text: meta.trace_id || "" },
      { text: (d.error && d.error.message) || "", cls: "error" }]);
    tr.dataset.id = d.id;
    tr.addEventListener("click", () => openDocument(d.id).catch(report));
    return tr;
  }), "no stored event matches");
  $("events").dataset.shown = params.toString();  // which search the rows answer
}

async function openDocument(id) {
  const response = await fetch(`${API}/events/${encodeURIComponent(id)}`, { credentials: "same-origin" });
  const body = await response.json();
  $("document-title").textContent = id;
  $("document-body").textContent = JSON.stringify(body, null, 2);
  $("document").showModal();
}

function report(error) {
  $("status").textContent = error.message;
}

async function refresh() {
  $("status").textContent = "";
  document.body.dataset.loaded = "";
  const panels = [traffic(), latencySeries(), latencyReport(), errors(), cost(), users(), quota(), search()];
  const results = await Promise.allSettled(panels);
  const failed = results.filter((r) => r.status === "rejected");
  if (failed.length) report(failed[0].reason);
  document.body.dataset.loaded = String(Date.now());  // tests wait on this
}

function chooseWindow(since) {
  for (const b of $("windows").querySelectorAll("button")) b.classList.toggle("on", b.dataset.since === since);
  $("custom").hidden = since !== "custom";
  if (since === "custom") return;
  state.since = since;
  state.until = null;
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("windows").addEventListener("click", (e) => { if (e.target.dataset.since) chooseWindow(e.target.dataset.since); });
  $("apply").addEventListener("click", () => {
    const since = $("since").value, until = $("until").value;
    if (!since) { report(new Error("choose when the window starts")); return; }
    state.since = new Date(since).toISOString();
    state.until = until ? new Date(until).toISOString() : null;
    refresh();
  });
  $("refresh").addEventListener("click", refresh);
  $("auto").addEventListener("change", (e) => {
    clearInterval(state.timer);
    state.timer = e.target.checked ? setInterval(refresh, 30000) : null;
  });
  $("filters").addEventListener("submit", (e) => search(e).catch(report));
  $("filters").addEventListener("reset", () => setTimeout(() => search().catch(report)));
  $("close").addEventListener("click", () => $("document").close());
  refresh();
});

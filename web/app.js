// heapscope web UI: loads the API, wires the flame graph, the timeline,
// the tables and the live event stream together.
"use strict";

const $ = (id) => document.getElementById(id);

function human(b) {
  if (b == null) return "–";
  const neg = b < 0; let v = Math.abs(b);
  if (v < 1024) return (neg ? "-" : "") + v + " B";
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = -1;
  do { v /= 1024; i++; } while (v >= 1023.95 && i < units.length - 1);
  return (neg ? "-" : "") + v.toFixed(1) + " " + units[i];
}
const exact = (n) => (n == null ? "" : Number(n).toLocaleString("en-US"));
const sizeSpan = (b) => `<span title="${exact(b)} B">${human(b)}</span>`;
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const secs = (ms) => (ms / 1000).toFixed(1) + "s";
const winParam = (w) => (w ? `${w.start_ms}ms..${w.end_ms}ms` : "..");

const state = {
  meta: null, view: "flame", metric: "live-bytes", profile: null, diff: null,
  sel: { baseline: null, window: null }, sort: { key: "live_bytes", desc: true },
  sites: [], ticks: 0, refreshTimer: null, refreshes: 0,
};
window.heapscope = state; // for tests and the console

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(`${path}: ${body.error || r.status}`);
  return body;
}

function showError(e) { $("error").textContent = String(e.message || e); $("error").classList.remove("hidden"); }

// --- tooltip ---------------------------------------------------------------
const tip = $("tooltip");
function placeTip(e) {
  const x = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  const y = e.clientY + 16 + tip.offsetHeight > window.innerHeight ? e.clientY - tip.offsetHeight - 8 : e.clientY + 16;
  tip.style.left = x + "px"; tip.style.top = y + "px";
}
function hideTip() { tip.classList.add("hidden"); }
function estimatedText() {
  const m = state.meta;
  return m && m.exact ? "exact (every allocation)" : `estimated (sampled, 1 per ${human(m ? m.sample_rate : 0)} on average)`;
}
const metricValue = { "live-bytes": (n) => n.live_bytes, "alloc-bytes": (n) => n.alloc_bytes, "allocs": (n) => n.allocs };

function flameTip(n, e) {
  const rows = [];
  if (state.view === "diff") {
    const d = n.after - n.before;
    rows.push(["baseline", sizeSpan(n.before)], ["window", sizeSpan(n.after)],
      ["change", (d >= 0 ? "+" : "") + human(d) + ` (${exact(d)} B)`]);
    if (n.new) rows.push(["", "<b>new in the window</b>"]);
    if (n.gone) rows.push(["", "<b>gone in the window</b>"]);
  } else {
    const total = metricValue[state.metric](flame.root) || 1;
    rows.push(["live bytes", `${human(n.live_bytes)} (${exact(n.live_bytes)} B)`],
      ["live blocks", exact(n.live_blocks)],
      ["allocated", `${human(n.alloc_bytes)} (${exact(n.alloc_bytes)} B)`],
      ["allocations", exact(n.allocs)],
      ["share", (100 * metricValue[state.metric](n) / total).toFixed(1) + "% of " + $("metric").selectedOptions[0].text]);
  }
  rows.push(["numbers", estimatedText()]);
  tip.innerHTML = `<div class="fn">${esc(n.name)}</div>` + (n.loc ? `<div>${esc(n.loc)}</div>` : "") +
    "<table>" + rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("") + "</table>";
  tip.classList.remove("hidden");
  placeTip(e);
}

// --- flame graph -------------------------------------------------------------
const flame = new FlameGraph($("flame"), {
  value: (n) => (state.view === "diff" ? n.after : metricValue[state.metric](n)),
  colour: (n) => (state.view === "diff" ? flameColours.diffColour(n) : flameColours.warm(n)),
  onHover: flameTip, onLeave: hideTip, onFocus: () => { crumbs(); updateMatch(); },
});

function crumbs() {
  const path = flamePath(flame.focus || flame.root);
  $("crumbs").innerHTML = path.length > 1
    ? "zoomed: " + path.map((n, i) => `<a data-i="${i}">${esc(n.name)}</a>`).join(" › ")
    : "click a frame to zoom";
  $("crumbs").querySelectorAll("a").forEach((a) => a.addEventListener("click", () => flame.zoom(path[+a.dataset.i])));
}

function updateMatch() {
  const m = flame.matched();
  $("match").innerHTML = m ? `matched: <b id="match-share">${(m.share * 100).toFixed(1)}%</b> (${sizeSpan(m.bytes)})` : "";
}

$("search").addEventListener("input", () => {
  const q = $("search").value.trim();
  let re = null;
  if (q) { try { re = new RegExp(q, "i"); } catch (_) { re = new RegExp(q.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "i"); } }
  flame.setSearch(re); updateMatch();
});
$("icicle").addEventListener("change", () => flame.setIcicle($("icicle").checked));
$("reset").addEventListener("click", () => { flame.reset(); });
$("metric").addEventListener("change", () => { state.metric = $("metric").value; loadProfile(); });

// --- tables ----------------------------------------------------------------
function siteName(frames) {
  const f = frames.slice(-2).reverse();
  return `<b>${esc(f[0] || "?")}</b>` + (f[1] ? ` <span class="muted">← ${esc(f[1])}</span>` : "");
}

function renderTopTable() {
  const cols = [["site", "call site"], ["api", "API"], ["live_bytes", "live"], ["live_blocks", "blocks"], ["alloc_bytes", "allocated"], ["allocs", "allocs"]];
  const { key, desc } = state.sort;
  const sites = state.sites.slice().sort((a, b) => {
    const x = key === "site" ? a.frames[a.frames.length - 1] : a[key], y = key === "site" ? b.frames[b.frames.length - 1] : b[key];
    return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1);
  });
  const t = $("table");
  t.innerHTML = "<tr>" + cols.map(([k, l]) => `<th data-k="${k}">${l}${k === key ? (desc ? " ▾" : " ▴") : ""}</th>`).join("") + "</tr>" +
    sites.map((s, i) => `<tr data-i="${i}" data-fn="${esc(s.frames[s.frames.length - 1] || "")}"><td>${siteName(s.frames)}</td><td>${esc(s.api)}</td>` +
      `<td>${sizeSpan(s.live_bytes)}</td><td>${exact(s.live_blocks)}</td><td>${sizeSpan(s.alloc_bytes)}</td><td>${exact(s.allocs)}</td></tr>`).join("");
  t.querySelectorAll("th").forEach((th) => th.addEventListener("click", () => {
    const k = th.dataset.k;
    state.sort = { key: k, desc: state.sort.key === k ? !state.sort.desc : k !== "site" };
    renderTopTable();
  }));
  t.querySelectorAll("tr[data-i]").forEach((tr) => tr.addEventListener("click", () => {
    const s = sites[+tr.dataset.i];
    const n = flame.findPath(s.frames);
    if (n) flame.zoom(n);
  }));
}

function renderDiffTable(d) {
  const t = $("table");
  t.innerHTML = "<tr><th>call site</th><th>API</th><th>baseline</th><th>window</th><th>change</th></tr>" +
    d.changes.map((c) => `<tr class="${c.delta > 0 ? "grow" : "shrink"}" data-fn="${esc(c.frames[c.frames.length - 1] || "")}">` +
      `<td>${siteName(c.frames)}${c.new ? '<span class="badge new">NEW</span>' : ""}${c.gone ? '<span class="badge gone">GONE</span>' : ""}</td>` +
      `<td>${esc(c.api)}</td><td>${sizeSpan(c.before)}</td><td>${sizeSpan(c.after)}</td>` +
      `<td title="${exact(c.delta)} B">${c.delta > 0 ? "+" : ""}${human(c.delta)}</td></tr>`).join("") +
    (d.changed_sites > d.changes.length ? `<tr><td colspan="5" class="muted">${d.changed_sites - d.changes.length} more changed sites</td></tr>` : "");
  t.querySelectorAll("tr[data-fn]").forEach((tr, i) => tr.addEventListener("click", () => {
    const c = d.changes[i];
    const n = flame.findPath(c.frames);
    if (n) flame.zoom(n);
  }));
}

// --- loading -----------------------------------------------------------------
async function loadProfile() {
  const w = winParam(state.sel.window);
  const [p, top] = await Promise.all([
    api(`api/v1/profile?window=${w}&metric=${state.metric}`),
    api(`api/v1/top?window=${w}&metric=${state.metric}&limit=200`),
  ]);
  state.profile = p; state.sites = top.sites;
  if (state.view !== "flame") return;
  flame.setTree(p.root, true);
  crumbs(); updateMatch(); renderTopTable();
  $("view-note").textContent = `window ${state.sel.window ? secs(state.sel.window.start_ms) + "–" + secs(state.sel.window.end_ms) : "whole session"} · ${p.sites} call sites · ${p.exact ? "exact" : "sampled estimates"}`;
  if (!document.body.dataset.flameReady) document.body.dataset.flameMs = String(Math.round(performance.now()));
  document.body.dataset.flameReady = "1";
}

async function loadDiff() {
  const { baseline, window: win } = state.sel;
  if (!baseline || !win) { $("view-note").textContent = "drag on the timeline to select a baseline, then a window"; return; }
  const d = await api(`api/v1/diff?baseline=${winParam(baseline)}&window=${winParam(win)}&top=50`);
  state.diff = d;
  if (state.view !== "diff") return;
  flame.setTree(d.root, false);
  crumbs(); updateMatch(); renderDiffTable(d);
  $("view-note").innerHTML = `live heap ${sizeSpan(d.before_total)} → ${sizeSpan(d.after_total)} · ` +
    `<span style="color:#b35200">■ grew</span> <span style="color:#0b5cad">■ shrank</span> · dashed outline = new · ${d.changed_sites} sites changed`;
  document.body.dataset.diffReady = "1";
}

function setView(v) {
  state.view = v;
  $("tab-flame").classList.toggle("active", v === "flame");
  $("tab-diff").classList.toggle("active", v === "diff");
  $("metric").disabled = v === "diff";
  (v === "flame" ? loadProfile() : loadDiff()).catch(showError);
}
$("tab-flame").addEventListener("click", () => setView("flame"));
$("tab-diff").addEventListener("click", () => setView("diff"));

function renderFindings(f, meta) {
  const out = [];
  for (const x of f.findings) {
    if (x.kind === "leak") {
      out.push(`<div class="finding leak"><b>leak</b>: ${siteName(x.frames)} (${esc(x.api)}) grows <b>${human(x.slope_bytes_per_hour)}/h</b>, ` +
        `confidence ${x.confidence.toFixed(2)}, rose at ${(x.grew_share * 100).toFixed(0)}% of its changes; live ${sizeSpan(x.live_bytes_start)} → ${sizeSpan(x.live_bytes_end)}</div>`);
    } else if (x.kind === "retained-after-peak") {
      out.push(`<div class="finding retention"><b>memory not returned after a peak</b>: live heap ${sizeSpan(x.live_peak)} at ${secs(x.peak_ms)} → ${sizeSpan(x.live_end)}, ` +
        `RSS anon ${sizeSpan(x.rss_anon_peak)} → ${sizeSpan(x.rss_anon_end)}; ${sizeSpan(x.retained)} retained (${x.arenas} arenas). See Allocator below.</div>`);
    } else {
      out.push(`<div class="finding retention"><b>allocator retention, not a leak</b>: RSS anon ${sizeSpan(x.rss_anon_start)} → ${sizeSpan(x.rss_anon_end)} ` +
        `while the live heap went ${sizeSpan(x.live_heap_start)} → ${sizeSpan(x.live_heap_end)} (gap ${human(x.gap_growth_bytes_per_hour)}/h; ${x.arena_heaps} arena heaps).` +
        `<ul>${x.remedies.map((r) => `<li>${esc(r)}</li>`).join("")}</ul></div>`);
    }
  }
  if (!out.length) out.push('<div class="muted">no leak, no allocator retention found' + (f.suspects.length ? ` (${f.suspects.length} weak suspects)` : "") + "</div>");
  $("findings").innerHTML = out.join("");
  renderCounters(meta);
  if (!state.sel.window) renderAllocator(f, "..");
}

// --- allocator panel: glibc's arenas, cross-thread frees, measured remedies ---
function arenaName(a) {
  if (a.kind === "main") return "main heap ([heap])";
  if (a.kind === "mmapped") return `mmapped chunks (${a.heaps})`;
  return `arena 0x${a.address.toString(16)} (${a.heaps} heap${a.heaps === 1 ? "" : "s"})`;
}
const bytesTd = (v, est) => `<td data-b="${v}">${est}${sizeSpan(v)}</td>`;

// `win`: the window the findings are of (`..` for the whole session).
function renderAllocator(f, win) {
  const a = f.arenas;
  const remedies = [...new Set(f.findings.flatMap((x) => x.measured_remedies || []))];
  $("alloc-box").classList.toggle("hidden", !a && !remedies.length);
  document.body.dataset.allocFor = win;
  if (!a && !remedies.length) return;
  const out = [];
  if (a) {
    const est = a.estimated ? "~" : "";
    const label = a.estimated ? "estimated (sampled)" : a.lost_events ? `exact but for ${exact(a.lost_events)} lost events` : "exact";
    $("alloc-note").innerHTML = `at ${secs(a.t_ms)}${state.sel.window ? " (end of the window)" : ""} · live and cross-thread numbers <b id="alloc-exactness">${label}</b>`;
    if (a.arenas_compared && a.arenas.length) {
      out.push('<table id="arena-table"><tr><th>glibc arena</th><th>reserved</th><th>resident</th><th>live</th><th>retained</th></tr>' +
        a.arenas.map((r) => `<tr data-kind="${r.kind}" data-address="${r.address}"><td>${esc(arenaName(r))}</td>` +
          bytesTd(r.reserved, "") + bytesTd(r.resident, "") + bytesTd(r.live, est) + bytesTd(r.retained, est) + "</tr>").join("") +
        '</table>');
    }
    const by = a.arenas_compared ? "into an arena not the freeing thread's" : "arenas not compared: by thread alone";
    out.push(a.cross_thread_sites.length
      ? `<table id="cross-table"><tr><th>freed by another thread (${by})</th><th>bytes</th><th>blocks</th><th>of allocated</th></tr>` +
        a.cross_thread_sites.map((c) => `<tr data-fn="${esc(c.frames[c.frames.length - 1] || "")}"><td class="site">${siteName(c.frames)} <span class="muted">(${esc(c.api)})</span></td>` +
          bytesTd(c.bytes, est) + `<td data-n="${c.blocks}">${est}${exact(c.blocks)}</td>` +
          `<td>${c.alloc_bytes ? (100 * c.bytes / c.alloc_bytes).toFixed(0) + "%" : "–"}</td></tr>`).join("") +
        `<tr class="total"><td>all</td>${bytesTd(a.cross_thread_bytes, est)}<td data-n="${a.cross_thread_blocks}">${est}${exact(a.cross_thread_blocks)}</td><td></td></tr></table>`
      : '<div class="muted" id="cross-table">no block freed by another thread</div>');
  }
  if (remedies.length) out.push(`<div id="remedies"><b>measured remedies</b><ul>${remedies.map((r) => `<li>${esc(r)}</li>`).join("")}</ul></div>`);
  $("allocator").innerHTML = out.join("");
  document.body.dataset.allocReady = String(a ? a.t_ms : -1);
  document.body.dataset.allocFor = win;
}

// The Allocator panel follows the selected window; the findings stay the whole session's.
function loadAllocator() {
  const w = winParam(state.sel.window);
  return api(`api/v1/findings?top=10&window=${w}`).then((f) => renderAllocator(f, w));
}

function renderCounters(meta) {
  const lost = meta.counters.filter((c) => c.section === "lost");
  const totalLost = lost.reduce((a, c) => a + c.value, 0) + meta.server_dropped_ticks;
  $("s-lost").textContent = exact(totalLost);
  $("lost").classList.toggle("bad", totalLost > 0);
  $("lost").title = lost.map((c) => `${c.id}: ${c.value}`).join("\n");
  // Lost counters first: they say whether the other numbers are complete.
  const ordered = lost.concat(meta.counters.filter((c) => c.section !== "lost"));
  $("counters").innerHTML = '<div class="counters">' + ordered.map((c) =>
    `<span class="${c.section === "lost" ? "lostrow" : ""}" title="${esc(c.help)}">${c.section === "lost" ? "lost: " : ""}${esc(c.id.replace(/_/g, " "))}</span>` +
    `<span class="${c.value ? "nz" : ""}" id="counter-${c.id}">${exact(c.value)}</span>`).join("") +
    (meta.server_dropped_ticks ? `<span class="lostrow">lost: ticks the server dropped</span><span class="nz">${meta.server_dropped_ticks}</span>` : "") + "</div>";
}

// The live heap series' name: exact, or the samples' estimate (uprobe sessions).
function liveLabel(pt) {
  return pt.live_estimated ? "live heap (estimate: uprobe sessions)" : "live heap (exact)";
}

function renderHeader(meta, last) {
  $("proc").textContent = `pid ${meta.pid} (${meta.comm})`;
  $("mode").textContent = (meta.live ? "live" : "recording") + " · " + (meta.exact ? "exact" : `sampled 1/${human(meta.sample_rate)}`) +
    (meta.live_estimated ? " · live heap estimated (uprobe sessions)" : "") + (meta.truncated ? " · truncated" : "");
  if (!last) return;
  // The final tick of a session may have no memory sample (the target exited).
  const withMem = chart.points.slice().reverse().find((p) => p.rss_anon != null) || last;
  // With uprobe sessions the live heap is the samples' estimate: say so.
  $("s-live").innerHTML = (last.live_estimated ? "~" : "") + sizeSpan(last.live_heap);
  $("s-live").title = last.live_estimated ? "estimate from the samples: uprobe sessions skipped the returns of unsampled allocations, whose blocks are not tracked" : "exact: allocated − freed since attach";
  $("l-live-text").textContent = liveLabel(last);
  $("s-rss").innerHTML = sizeSpan(withMem.rss_anon);
  $("s-foot").innerHTML = sizeSpan(withMem.allocator_footprint);
  $("s-rate").textContent = Math.round(last.allocs_per_s).toLocaleString("en-US");
}

const chart = new TimelineChart($("timeline"), {
  human,
  kind: () => ($("sel-window").checked ? "window" : "baseline"),
  onSelect: (kind, sel) => {
    state.sel[kind] = sel;
    if (kind === "baseline") $("sel-window").checked = true;
    selText();
    if (state.sel.baseline && state.sel.window) setView("diff"); else if (kind === "window") loadProfile().catch(showError);
    if (kind === "window") loadAllocator().catch(showError);
  },
  onHover: (pt, e) => {
    state.hovered = pt;
    tip.innerHTML = `<div class="fn">${secs(pt.t_ms)}</div><table>` +
      [[liveLabel(pt), pt.live_heap], ["RSS anon", pt.rss_anon], ["allocator footprint", pt.allocator_footprint]]
        .concat(pt.arenas || pt.main_heap_resident ? [["main heap resident", pt.main_heap_resident],
          [`${pt.arenas} arenas resident`, pt.arena_resident], [`${pt.arenas} arenas reserved`, pt.arena_reserved],
          ["mmapped chunks resident", pt.mmapped_resident]] : [])
        .map(([k, v]) => `<tr><td>${k}</td><td>${human(v)} (${exact(v)} B)</td></tr>`).join("") +
      `<tr><td>allocs/s</td><td>${exact(Math.round(pt.allocs_per_s))}</td></tr><tr><td>lost</td><td>${exact(pt.lost)}</td></tr></table>`;
    tip.classList.remove("hidden"); placeTip(e);
  },
  onLeave: hideTip,
});

function selText() {
  const f = (s) => (s ? `${secs(s.start_ms)}–${secs(s.end_ms)}` : "not set");
  $("sel-text").textContent = `baseline ${f(state.sel.baseline)} · window ${f(state.sel.window)}`;
}
$("clear-sel").addEventListener("click", () => {
  state.sel = { baseline: null, window: null }; chart.clear(); $("sel-baseline").checked = true; selText(); setView("flame");
  loadAllocator().catch(showError);
});

async function refreshLive() {
  state.refreshTimer = null;
  const meta = await api("api/v1/meta");
  state.meta = meta;
  renderCounters(meta);
  if (state.view === "flame" && !state.sel.window) await loadProfile();
  if (++state.refreshes % 5 === 1) renderFindings(await api("api/v1/findings?top=10"), meta);
}

function listen() {
  const es = new EventSource("api/v1/events");
  es.addEventListener("tick", (e) => {
    const pt = JSON.parse(e.data);
    state.ticks++;
    $("ticks-received").textContent = state.ticks;
    chart.push(pt);
    renderHeader(state.meta, pt);
    // At most one refresh of the profile per second.
    if (!state.refreshTimer) state.refreshTimer = setTimeout(() => refreshLive().catch(showError), 1000);
  });
  // The session ended (or the server stopped): say so; the browser retries.
  es.onerror = () => { $("mode").textContent = "live · disconnected (session ended?)"; };
  es.onopen = () => renderHeader(state.meta, null);
  es.addEventListener("lagged", () => api("api/v1/timeline").then((t) => chart.setPoints(t.points)).catch(showError));
}

async function main() {
  try {
    // Findings take longest on long sessions: they do not hold up the rest.
    const findings = api("api/v1/findings?top=10");
    const [meta, tl] = await Promise.all([api("api/v1/meta"), api("api/v1/timeline")]);
    state.meta = meta;
    if (meta.damage) showError(new Error(`warning: this recording ${meta.damage}; numbers after a damaged stretch may be wrong`));
    chart.setPoints(tl.points);
    renderHeader(meta, tl.points[tl.points.length - 1]);
    renderCounters(meta);
    selText();
    if (meta.live) { $("live-ind").classList.remove("hidden"); listen(); }
    const profile = loadProfile();
    renderFindings(await findings, meta);
    await profile;
  } catch (e) {
    showError(e);
  }
}
window.addEventListener("resize", () => flame.draw());
main();

// The timeline chart: live heap (exact, or the samples' estimate under uprobe
// sessions), RSS (anon) and allocator footprint
// per tick, as SVG; dragging selects the baseline or the window.
"use strict";

const TL_NS = "http://www.w3.org/2000/svg";
const PAD = { l: 62, r: 8, t: 6, b: 18 };

function tlEl(name, attrs) {
  const e = document.createElementNS(TL_NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  return e;
}

class TimelineChart {
  // opts: onSelect(kind, {start_ms, end_ms}), kind() -> "baseline" | "window", human(bytes)
  constructor(container, opts) {
    this.el = container;
    this.opts = opts;
    this.points = [];
    this.sel = { baseline: null, window: null };
    this.drag = null;
    this.el.addEventListener("mousedown", (e) => this.start(e));
    window.addEventListener("mousemove", (e) => this.move(e));
    window.addEventListener("mouseup", (e) => this.end(e));
    window.addEventListener("resize", () => this.draw());
  }

  setPoints(points) { this.points = points; this.draw(); }
  push(point) { this.points.push(point); this.draw(); }
  clear() { this.sel = { baseline: null, window: null }; this.draw(); }

  span() {
    const p = this.points;
    if (!p.length) return [0, 1];
    const a = p[0].t_ms, b = p[p.length - 1].t_ms;
    return [a, b > a ? b : a + 1];
  }

  geometry() {
    const w = Math.max(200, this.el.clientWidth || 600);
    const h = Math.max(80, this.el.clientHeight || 150);
    return { w, h, iw: w - PAD.l - PAD.r, ih: h - PAD.t - PAD.b };
  }

  xOf(t) { const [a, b] = this.span(); const g = this.geometry(); return PAD.l + ((t - a) / (b - a)) * g.iw; }
  tOf(x) {
    const [a, b] = this.span(); const g = this.geometry();
    const f = Math.min(1, Math.max(0, (x - PAD.l) / g.iw));
    return Math.round(a + f * (b - a));
  }

  localX(e) { return e.clientX - this.el.getBoundingClientRect().left; }
  start(e) { if (!this.points.length) return; this.drag = { x0: this.localX(e), x1: this.localX(e) }; e.preventDefault(); }
  move(e) { if (!this.drag) return; this.drag.x1 = this.localX(e); this.draw(); }
  end() {
    if (!this.drag) return;
    this.opts.onLeave();
    const { x0, x1 } = this.drag;
    this.drag = null;
    let a = this.tOf(Math.min(x0, x1)), b = this.tOf(Math.max(x0, x1));
    if (Math.abs(x1 - x0) < 3) { this.draw(); return; }
    const kind = this.opts.kind();
    this.sel[kind] = { start_ms: a, end_ms: b };
    this.draw();
    this.opts.onSelect(kind, this.sel[kind]);
  }

  draw() {
    const el = this.el;
    el.textContent = "";
    const g = this.geometry();
    const svg = tlEl("svg", { width: g.w, height: g.h });
    const p = this.points;
    const series = [
      ["live_heap", "#0072b2", ""],
      ["rss_anon", "#d55e00", "5 3"],
      ["allocator_footprint", "#555", "1 3"],
    ];
    let max = 1;
    for (const pt of p) for (const [k] of series) if (pt[k] != null && pt[k] > max) max = pt[k];
    const yOf = (v) => PAD.t + g.ih - (v / max) * g.ih;
    // Axes: 4 horizontal grid lines with human sizes, seconds below.
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4, y = yOf(v);
      svg.appendChild(tlEl("line", { x1: PAD.l, x2: g.w - PAD.r, y1: y, y2: y, stroke: "#eee" }));
      const t = tlEl("text", { x: PAD.l - 4, y: y + 4, "text-anchor": "end", "font-size": 10, fill: "#666" });
      t.textContent = this.opts.human(Math.round(v));
      svg.appendChild(t);
    }
    const [a, b] = this.span();
    for (let i = 0; i <= 5; i++) {
      const t = a + ((b - a) * i) / 5;
      const tx = tlEl("text", { x: this.xOf(t), y: g.h - 4, "text-anchor": "middle", "font-size": 10, fill: "#666" });
      tx.textContent = (t / 1000).toFixed(t < 10000 ? 1 : 0) + "s";
      svg.appendChild(tx);
    }
    const band = (s, fill, id, label) => {
      if (!s) return;
      const x0 = this.xOf(s.start_ms), x1 = this.xOf(s.end_ms);
      svg.appendChild(tlEl("rect", { id, x: x0, y: PAD.t, width: Math.max(2, x1 - x0), height: g.ih, fill }));
      const t = tlEl("text", { x: x0 + 3, y: PAD.t + 11, "font-size": 10, fill: "#333" });
      t.textContent = label;
      svg.appendChild(t);
    };
    band(this.sel.baseline, "rgba(0,114,178,.18)", "band-baseline", "baseline");
    band(this.sel.window, "rgba(230,159,0,.28)", "band-window", "window");
    for (const [k, colour, dash] of series) {
      let d = "";
      for (const pt of p) {
        if (pt[k] == null) continue;
        d += (d ? "L" : "M") + this.xOf(pt.t_ms).toFixed(1) + "," + yOf(pt[k]).toFixed(1);
      }
      if (d) svg.appendChild(tlEl("path", { d, fill: "none", stroke: colour, "stroke-width": 1.8, "stroke-dasharray": dash, "data-series": k }));
    }
    if (this.drag) {
      const x0 = Math.min(this.drag.x0, this.drag.x1), x1 = Math.max(this.drag.x0, this.drag.x1);
      svg.appendChild(tlEl("rect", { x: x0, y: PAD.t, width: x1 - x0, height: g.ih, fill: "rgba(0,0,0,.12)" }));
    }
    // Exact values on hover: the nearest tick.
    const hover = tlEl("rect", { x: PAD.l, y: PAD.t, width: g.iw, height: g.ih, fill: "transparent" });
    hover.addEventListener("mousemove", (e) => {
      if (!p.length || this.drag) return;
      const t = this.tOf(this.localX(e));
      let best = p[0];
      for (const pt of p) if (Math.abs(pt.t_ms - t) < Math.abs(best.t_ms - t)) best = pt;
      this.opts.onHover(best, e);
    });
    hover.addEventListener("mouseleave", () => this.opts.onLeave());
    svg.appendChild(hover);
    el.appendChild(svg);
  }
}

window.TimelineChart = TimelineChart;

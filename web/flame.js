// Flame graph (and differential flame graph) drawn as SVG: one <rect> per
// visible frame, so hovering, clicking and tests address frames directly.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const ROW = 17;          // pixel height of one frame row
const MIN_WIDTH = 0.4;   // frames narrower than this are not drawn

function hashName(s) {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 16777619); }
  return (h >>> 0) / 4294967296;
}

// Warm palette for ordinary frames; the allocator API leaf is grey.
function warm(node) {
  if (!node.children || node.children.length === 0) return "#c9c9c9";
  const r = hashName(node.name);
  return `hsl(${Math.round(20 + r * 35)}, ${Math.round(75 + r * 15)}%, ${Math.round(58 + r * 10)}%)`;
}

// Differential colours, colour-blind safe (Okabe-Ito orange vs blue):
// growth orange, shrink blue, intensity by relative change.
function diffColour(node) {
  const d = node.after - node.before;
  const base = Math.max(node.before, node.after, 1);
  const t = Math.min(1, Math.abs(d) / base);
  if (d === 0) return "#dcdcdc";
  const light = Math.round(88 - t * 38);
  return d > 0 ? `hsl(32, 100%, ${light}%)` : `hsl(205, 100%, ${light}%)`;
}

// Adds parent links and depth, once per tree.
function prepare(root) {
  const stack = [[root, null, 0]];
  let maxDepth = 0;
  while (stack.length) {
    const [n, p, d] = stack.pop();
    n.parent = p; n.depth = d; if (d > maxDepth) maxDepth = d;
    for (const c of n.children || []) stack.push([c, n, d + 1]);
  }
  root.maxDepth = maxDepth;
  return root;
}

function pathOf(node) {
  const out = [];
  for (let n = node; n; n = n.parent) out.unshift(n);
  return out;
}

class FlameGraph {
  // opts: value(node) -> number, colour(node) -> css, onHover(node, event), onLeave(), onFocus(node)
  constructor(container, opts) {
    this.el = container;
    this.opts = opts;
    this.root = null;
    this.focus = null;
    this.icicle = false;
    this.search = null;
    this.byRect = new Map();
    this.el.addEventListener("mousemove", (e) => {
      const n = this.byRect.get(e.target);
      if (n) this.opts.onHover(n, e); else this.opts.onLeave();
    });
    this.el.addEventListener("mouseleave", () => this.opts.onLeave());
    this.el.addEventListener("click", (e) => {
      const n = this.byRect.get(e.target);
      if (n) this.zoom(n);
    });
  }

  setTree(root, keepFocus) {
    const oldPath = keepFocus && this.focus ? pathOf(this.focus).map((n) => n.name) : null;
    this.root = prepare(root);
    this.focus = oldPath ? this.findPath(oldPath.slice(1)) || this.root : this.root;
    this.draw();
  }

  // The node reached from the root by frame names (`names` excludes the root).
  findPath(names) {
    let n = this.root;
    for (const name of names) {
      n = (n.children || []).find((c) => c.name === name);
      if (!n) return null;
    }
    return n;
  }

  zoom(node) { this.focus = node; this.draw(); this.opts.onFocus(node); }
  reset() { this.zoom(this.root); }
  setIcicle(v) { this.icicle = v; this.draw(); }
  setSearch(re) { this.search = re; this.draw(); }

  // Share of the focus's value in frames matching the search (outermost matches only).
  matched() {
    if (!this.search || !this.focus) return null;
    const v = this.opts.value;
    let sum = 0;
    const walk = (n) => {
      if (this.search.test(n.name)) { sum += v(n); return; }
      for (const c of n.children || []) walk(c);
    };
    walk(this.focus);
    const total = v(this.focus);
    return { bytes: sum, share: total > 0 ? sum / total : 0 };
  }

  draw() {
    const el = this.el;
    el.textContent = "";
    this.byRect = new Map();
    if (!this.root) return;
    const width = Math.max(300, el.clientWidth || 800);
    const v = this.opts.value;
    const total = v(this.focus);
    const rows = this.root.maxDepth + 1;
    const height = rows * ROW + 2;
    const svg = document.createElementNS(SVGNS, "svg");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    const y = (depth) => (this.icicle ? depth * ROW : height - (depth + 1) * ROW);
    const frag = document.createDocumentFragment();
    const add = (n, x, w) => {
      const r = document.createElementNS(SVGNS, "rect");
      r.setAttribute("x", x.toFixed(2));
      r.setAttribute("y", y(n.depth));
      r.setAttribute("width", Math.max(w - 0.5, 0.5).toFixed(2));
      r.setAttribute("height", ROW - 1);
      r.setAttribute("fill", this.opts.colour(n));
      r.dataset.name = n.name;
      if (n.new) r.dataset.new = "1";
      if (n.after !== undefined) r.dataset.delta = String(n.after - n.before);
      if (this.search) r.classList.add(this.search.test(n.name) ? "match" : "dim");
      if (n.new) { r.setAttribute("stroke", "#000"); r.setAttribute("stroke-dasharray", "3 2"); r.setAttribute("stroke-width", "1.2"); }
      frag.appendChild(r);
      this.byRect.set(r, n);
      if (w > 28) {
        const t = document.createElementNS(SVGNS, "text");
        t.setAttribute("x", (x + 3).toFixed(2));
        t.setAttribute("y", y(n.depth) + ROW - 5);
        const label = (n.new ? "NEW " : "") + n.name;
        const fit = Math.floor((w - 6) / 6.6);
        t.textContent = label.length > fit ? label.slice(0, Math.max(0, fit - 1)) + "…" : label;
        frag.appendChild(t);
      }
    };
    // Ancestors of the focus span the whole width.
    for (const a of pathOf(this.focus).slice(0, -1)) add(a, 0, width);
    if (total > 0) {
      const stack = [[this.focus, 0, width]];
      while (stack.length) {
        const [n, x, w] = stack.pop();
        add(n, x, w);
        let cx = x;
        for (const c of n.children || []) {
          const cw = (v(c) / v(n)) * w;
          if (cw >= MIN_WIDTH) stack.push([c, cx, cw]);
          cx += cw;
        }
      }
    } else {
      const t = document.createElementNS(SVGNS, "text");
      t.setAttribute("x", 8); t.setAttribute("y", height - 5);
      t.textContent = "nothing to show for this metric and window";
      frag.appendChild(t);
    }
    svg.appendChild(frag);
    el.appendChild(svg);
  }
}

window.FlameGraph = FlameGraph;
window.flameColours = { warm, diffColour };
window.flamePath = pathOf;

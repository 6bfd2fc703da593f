//! The web UI in a real headless chromium on the recording of the growth
//! fixture's leak: the leaking function is in the flame graph with its bytes
//! in the tooltip, search highlights it, a baseline and a window dragged on
//! the timeline give a diff that marks it as grown. Screenshots go to
//! target/heapscope-ui/. On a recording made with uprobe sessions the page
//! calls the live heap an estimate.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use common::serve::*;
use common::webdriver::*;
use common::*;

const LEAK_RECT: &str = "#flame rect[data-name=\"leak_slowly\"]";

#[test]
fn ui_flame_graph_search_and_diff_on_the_leak_recording() {
    if !browser_or_skip("ui_flame_graph_search_and_diff_on_the_leak_recording") {
        return;
    }
    let s = serve(&leak_recording());
    let shots = screenshot_dir();
    let b = Browser::start(&scratch("ui-profile").join("chromium"));
    b.goto(&s.url);
    b.wait(
        "document.body.dataset.flameReady === '1'",
        "the flame graph",
    );
    b.wait(
        &format!("document.querySelector('{LEAK_RECT}')"),
        "leak_slowly in the flame graph",
    );

    // Hover: the tooltip names the function, its source line and exact bytes.
    let (x, y) = b.centre(LEAK_RECT);
    b.hover(x, y);
    let tip = b.wait(
        "!document.getElementById('tooltip').classList.contains('hidden') && document.getElementById('tooltip').innerText",
        "the tooltip",
    );
    let tip = tip.as_str().unwrap_or("").to_string();
    assert!(tip.contains("leak_slowly"), "{tip}");
    assert!(tip.contains("1,966,080 B"), "{tip}");
    assert!(tip.contains("1.9 MiB"), "{tip}");
    assert!(tip.contains("growth.c:"), "{tip}");
    assert!(tip.contains("exact"), "{tip}");
    b.screenshot(&shots.join("flame-tooltip.png"));

    // Search: the frame is highlighted, the others dimmed, the share shown.
    b.type_into("#search", "leak_slow");
    b.wait(
        &format!("document.querySelector('{LEAK_RECT}').classList.contains('match')"),
        "the match",
    );
    assert!(
        b.js("return document.querySelectorAll('#flame rect.dim').length")
            .as_u64()
            > Some(0)
    );
    let share = b.wait("document.getElementById('match-share') && document.getElementById('match-share').textContent", "the matched share");
    assert_eq!(share, "100.0%");
    b.screenshot(&shots.join("flame-search.png"));

    b.js("const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'));");

    // A click on the table row zooms the flame graph to that call site.
    let (x, y) = b.centre("#table tr[data-fn=\"leak_slowly\"] td");
    b.click(x, y);
    b.wait(
        "document.getElementById('crumbs').textContent.includes('leak_slowly')",
        "the zoom",
    );

    // Baseline: the first sixth of the timeline; window: the last sixth.
    let r = b.js("const r = document.querySelector('#timeline svg').getBoundingClientRect(); return [r.left, r.width, r.top + r.height / 2];");
    let (left, width, mid) = (
        r[0].as_f64().expect("left"),
        r[1].as_f64().expect("width"),
        r[2].as_f64().expect("y"),
    );
    let (l, w) = (left + 62.0, width - 70.0); // the plot area inside the axes
    b.drag(l + 2.0, l + w / 6.0, mid);
    b.wait(
        "document.getElementById('band-baseline')",
        "the baseline band",
    );
    b.drag(l + w * 5.0 / 6.0, l + w - 1.0, mid);
    b.wait("document.body.dataset.diffReady === '1'", "the diff");
    let grown = b.wait(
        "document.querySelector('#table tr.grow[data-fn=\"leak_slowly\"]') && document.querySelector('#table tr.grow[data-fn=\"leak_slowly\"]').innerText",
        "leak_slowly as grown in the table of changes",
    );
    assert!(grown.as_str().unwrap_or("").contains('+'), "{grown}");
    let delta = b.js(&format!(
        "return Number(document.querySelector('{LEAK_RECT}').dataset.delta)"
    ));
    assert!(delta.as_f64() > Some(0.0), "delta {delta}");
    b.screenshot(&shots.join("diff.png"));
    if std::env::var("HEAPSCOPE_BLESS").as_deref() == Ok("1") {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/web-ui.png");
        std::fs::copy(shots.join("diff.png"), docs).expect("copy the README screenshot");
    }

    // Findings and loss counters are on screen without scrolling.
    let visible = b.js(
        "const f = document.getElementById('findings').getBoundingClientRect(); \
         const b = document.getElementById('counters-box').getBoundingClientRect(); \
         const c = document.getElementById('counter-ringbuf_lost').getBoundingClientRect(); \
         return f.bottom <= innerHeight && c.bottom <= b.bottom && c.top >= b.top && b.bottom <= innerHeight;",
    );
    assert_eq!(visible, true);
    let finding = b.js("return document.getElementById('findings').innerText");
    assert!(
        finding.as_str().unwrap_or("").contains("leak_slowly"),
        "{finding}"
    );
}

/// The arena rows and cross-thread rows of the Allocator panel, as numbers:
/// `[kind, address, reserved, resident, live, retained]` and
/// `[leaf, bytes, blocks]`, plus the remedies' text.
const PANEL_JS: &str = "return { \
  arenas: [...document.querySelectorAll('#arena-table tr[data-kind]')].map((tr) => \
    [tr.dataset.kind, Number(tr.dataset.address), ...[...tr.querySelectorAll('td[data-b]')].map((td) => Number(td.dataset.b))]), \
  cross: [...document.querySelectorAll('#cross-table tr[data-fn]')].map((tr) => \
    [tr.dataset.fn, Number(tr.querySelector('td[data-b]').dataset.b), Number(tr.querySelector('td[data-n]').dataset.n)]), \
  remedies: [...document.querySelectorAll('#remedies li')].map((li) => li.textContent), \
  text: document.getElementById('alloc-box').innerText };";

/// What the panel must show, from `/api/v1/findings`.
fn expected_panel(doc: &serde_json::Value) -> serde_json::Value {
    let a = &doc["arenas"];
    let arenas: Vec<serde_json::Value> = a["arenas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            serde_json::json!([
                r["kind"],
                r["address"],
                r["reserved"],
                r["resident"],
                r["live"],
                r["retained"]
            ])
        })
        .collect();
    let cross: Vec<serde_json::Value> = a["cross_thread_sites"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let leaf = c["frames"].as_array().and_then(|f| f.last()).cloned();
            serde_json::json!([leaf, c["bytes"], c["blocks"]])
        })
        .collect();
    let mut remedies: Vec<serde_json::Value> = Vec::new();
    for f in doc["findings"].as_array().expect("findings") {
        for r in f["measured_remedies"].as_array().into_iter().flatten() {
            if !remedies.contains(r) {
                remedies.push(r.clone());
            }
        }
    }
    serde_json::json!({ "arenas": arenas, "cross": cross, "remedies": remedies })
}

fn shown_panel(b: &Browser) -> (serde_json::Value, String) {
    let mut v = b.js(PANEL_JS);
    let text = v["text"].as_str().unwrap_or("").to_string();
    v.as_object_mut().expect("object").remove("text");
    (v, text)
}

#[test]
fn ui_allocator_panel_shows_the_apis_arenas_and_cross_thread_frees() {
    let test = "ui_allocator_panel_shows_the_apis_arenas_and_cross_thread_frees";
    if !root_or_skip(test) || !browser_or_skip(test) {
        return;
    }
    let (_, file) = common::xthread::run(test, &["--exact", "--ringbuf-size", "64MiB"]);
    let s = serve(&file);
    let whole = s.json("/api/v1/findings?top=10");
    let want = expected_panel(&whole);
    // The fixture's numbers: four arenas, produce_block's 2,000 blocks of
    // 8 KiB freed by the consumers, remedies measured.
    assert!(
        want["arenas"].as_array().map(Vec::len) >= Some(5),
        "{want:#}"
    );
    assert_eq!(
        want["cross"],
        serde_json::json!([["produce_block", 2000 * 8192, 2000]]),
        "{want:#}"
    );
    assert!(
        want["remedies"].as_array().map(Vec::len) >= Some(3),
        "{want:#}"
    );

    let b = Browser::start(&scratch(test).join("chromium"));
    b.goto(&s.url);
    let t_end = b.wait("document.body.dataset.allocReady", "the Allocator panel");
    assert_eq!(t_end, whole["arenas"]["t_ms"].to_string());
    let (shown, text) = shown_panel(&b);
    assert_eq!(shown, want, "{text}");
    assert!(text.contains("15.6 MiB"), "{text}");
    assert!(text.contains("2,000"), "{text}");
    assert!(text.contains("100%"), "{text}");
    assert!(text.contains("exact"), "{text}");
    assert!(text.contains("main heap ([heap])"), "{text}");
    b.screenshot(&screenshot_dir().join("allocator.png"));

    // Per tick, the timeline carries glibc's split; its tooltip shows the
    // API's numbers, and at the panel's tick they add up to its rows.
    let points = s.json("/api/v1/timeline")["points"].clone();
    let at = |t: &serde_json::Value| {
        points
            .as_array()
            .expect("points")
            .iter()
            .find(|p| &p["t_ms"] == t)
            .cloned()
            .expect("the tick")
    };
    let p = at(&whole["arenas"]["t_ms"]);
    let rows = whole["arenas"]["arenas"].as_array().expect("rows");
    let sum = |kind: &str| -> u64 {
        rows.iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["resident"].as_u64().expect("resident"))
            .sum()
    };
    assert_eq!(p["arena_resident"].as_u64(), Some(sum("arena")), "{p:#}");
    assert_eq!(p["main_heap_resident"].as_u64(), Some(sum("main")), "{p:#}");
    assert_eq!(p["arenas"], 4, "{p:#}");
    let r = b.js("const r = document.querySelector('#timeline svg').getBoundingClientRect(); return [r.left, r.width, r.top + r.height / 2];");
    let (left, width, mid) = (
        r[0].as_f64().expect("left"),
        r[1].as_f64().expect("width"),
        r[2].as_f64().expect("y"),
    );
    let (l, w) = (left + 62.0, width - 70.0);
    b.hover(l + w * 0.75, mid);
    let tip = b.wait(
        "window.heapscope.hovered && !document.getElementById('tooltip').classList.contains('hidden') && document.getElementById('tooltip').innerText",
        "the timeline tooltip",
    );
    let tip = tip.as_str().unwrap_or("").to_string();
    let p = at(&b.js("return window.heapscope.hovered.t_ms"));
    for k in ["arena_resident", "arena_reserved", "main_heap_resident"] {
        let v = p[k].as_u64().expect(k);
        let shown = format!("({} B)", thousands(v));
        assert!(tip.contains(&shown), "{k} {shown}: {tip}");
    }
    assert!(tip.contains("4 arenas resident"), "{tip}");
    b.js("document.getElementById('tooltip').classList.add('hidden')");

    // A window over the second half of the timeline: the panel shows the
    // arenas at the window's end, as the API gives them for that window.
    b.js("document.getElementById('sel-window').checked = true;");
    b.drag(l + w / 2.0, l + w - 1.0, mid);
    let sel = b.wait(
        "window.heapscope.sel.window && [window.heapscope.sel.window.start_ms, window.heapscope.sel.window.end_ms]",
        "the selected window",
    );
    let win = format!("{}ms..{}ms", sel[0], sel[1]);
    b.wait(
        &format!("document.body.dataset.allocFor === '{win}'"),
        "the Allocator panel for the window",
    );
    let doc = s.json(&format!("/api/v1/findings?top=10&window={win}"));
    assert!(doc["arenas"].is_object(), "{doc:#}");
    let (shown, text) = shown_panel(&b);
    assert_eq!(shown, expected_panel(&doc), "{text}");
    assert!(text.contains("end of the window"), "{text}");
}

/// `16384000` as `16,384,000`, as the UI writes exact byte counts.
fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn ui_says_the_live_heap_is_estimated_under_uprobe_sessions() {
    if !browser_or_skip("ui_says_the_live_heap_is_estimated_under_uprobe_sessions") {
        return;
    }
    let s = serve(&sessions_recording());
    let points = s.json("/api/v1/timeline")["points"].clone();
    let last = points
        .as_array()
        .and_then(|p| p.last())
        .cloned()
        .expect("a point");
    assert_eq!(last["live_estimated"], true, "{last}");
    let b = Browser::start(&scratch("ui-sessions").join("chromium"));
    b.goto(&s.url);
    b.wait(
        "document.body.dataset.flameReady === '1'",
        "the flame graph",
    );
    // The header chip, the legend and the mode line call it an estimate.
    let chip = b.wait(
        "document.getElementById('s-live').innerText.startsWith('~') && document.getElementById('s-live').innerText",
        "the estimated live heap chip",
    );
    let chip = chip.as_str().unwrap_or("").to_string();
    // The byte count in the size's title: the timeline's estimate.
    let title = b.js("return document.querySelector('#s-live span').title");
    let bytes = format!("{} B", thousands(last["live_heap"].as_u64().expect("live")));
    assert_eq!(title.as_str(), Some(bytes.as_str()), "{chip}");
    let legend = b.js("return document.getElementById('l-live-text').textContent");
    assert_eq!(legend, "live heap (estimate: uprobe sessions)");
    let mode = b.js("return document.getElementById('mode').textContent");
    assert!(
        mode.as_str().unwrap_or("").contains("live heap estimated"),
        "{mode}"
    );
    // The timeline's tooltip names the series as the estimate.
    let r = b.js("const r = document.querySelector('#timeline svg').getBoundingClientRect(); return [r.left, r.width, r.top + r.height / 2];");
    let (left, width, mid) = (
        r[0].as_f64().expect("left"),
        r[1].as_f64().expect("width"),
        r[2].as_f64().expect("y"),
    );
    b.hover(left + 62.0 + (width - 70.0) * 0.9, mid);
    let tip = b.wait(
        "window.heapscope.hovered && !document.getElementById('tooltip').classList.contains('hidden') && document.getElementById('tooltip').innerText",
        "the timeline tooltip",
    );
    let tip = tip.as_str().unwrap_or("").to_string();
    let hovered = b.js("return window.heapscope.hovered");
    if hovered["live_estimated"] == true {
        assert!(
            tip.contains("live heap (estimate: uprobe sessions)"),
            "{tip}"
        );
        assert!(!tip.contains("live heap (exact)"), "{tip}");
    }
    b.screenshot(&screenshot_dir().join("sessions-estimate.png"));
}

//! The web UI in a real headless chromium on the recording of the growth
//! fixture's leak: the leaking function is in the flame graph with its bytes
//! in the tooltip, search highlights it, a baseline and a window dragged on
//! the timeline give a diff that marks it as grown. Screenshots go to
//! target/heapscope-ui/.
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

//! Flame graph SVG, rendered by inferno from the folded lines.

use std::io::Write;

use inferno::flamegraph::{self, Options};

use crate::profile::{Metric, Profile};

use super::folded::{folded_lines, FoldedOptions};
use super::{Labels, ViewError};

/// The unit shown in the flame graph's tooltips for `metric`.
fn count_name(metric: Metric) -> &'static str {
    match metric {
        Metric::LiveBytes | Metric::AllocBytes => "bytes",
        Metric::Allocs => "allocations",
    }
}

/// What a flame graph shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SvgOptions {
    /// The number each stack is weighted by.
    pub metric: Metric,
    /// How frames are labelled (`--lines`).
    pub labels: Labels,
    /// The title at the top of the graph.
    pub title: String,
}

/// Writes an interactive flame graph of `profile` weighted by `opts.metric`.
/// A profile with nothing to show (inferno refuses empty input) still yields
/// a valid SVG that says "no samples".
pub fn write_svg(
    profile: &Profile,
    opts: &SvgOptions,
    out: &mut impl Write,
) -> Result<(), ViewError> {
    let (metric, title) = (opts.metric, opts.title.as_str());
    let folded = FoldedOptions {
        metric,
        labels: opts.labels,
    };
    let lines = folded_lines(profile, &folded);
    if lines.is_empty() {
        write_empty_svg(title, out)?;
        return Ok(());
    }
    let mut opt = Options::default();
    opt.title = title.to_string();
    opt.count_name = count_name(metric).to_string();
    // Colors otherwise come from a random generator; fixed colors keep the
    // output reproducible (and golden-testable).
    opt.deterministic = true;
    flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut *out).map_err(
        |source| ViewError::Flamegraph {
            title: title.to_string(),
            source,
        },
    )
}

fn write_empty_svg(title: &str, out: &mut impl Write) -> std::io::Result<()> {
    let title = xml_escape(title);
    write!(
        out,
        r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="120" viewBox="0 0 1200 120" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="100%" height="100%" fill="rgb(238,238,238)"/>
<text x="600" y="30" text-anchor="middle" font-family="Verdana" font-size="17">{title}</text>
<text x="600" y="75" text-anchor="middle" font-family="Verdana" font-size="14">no samples</text>
</svg>
"#
    )
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::testdata::{check_golden, sample_profile, sample_profile_with_lines};

    fn render(profile: &Profile, metric: Metric, title: &str) -> String {
        let mut out = Vec::new();
        let opts = SvgOptions {
            metric,
            title: title.to_string(),
            ..Default::default()
        };
        write_svg(profile, &opts, &mut out).expect("render svg");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn contains_functions_and_units() {
        let svg = render(&sample_profile(), Metric::LiveBytes, "live heap of leaky");
        assert!(svg.contains("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("live heap of leaky"));
        for name in [
            "main",
            "run_sites",
            "leak_malloc",
            "malloc",
            "[unknown stack]",
        ] {
            assert!(svg.contains(name), "missing {name}");
        }
        assert!(svg.contains("bytes"));
        // Escaped C++ template brackets, not raw ones inside text.
        assert!(svg.contains("std::vector&lt;int"));
        let allocs = render(&sample_profile(), Metric::Allocs, "allocations");
        assert!(allocs.contains("allocations"));
        assert!(allocs.contains("transient"));
    }

    #[test]
    fn output_is_deterministic_golden() {
        let a = render(&sample_profile(), Metric::LiveBytes, "heapscope live bytes");
        let b = render(&sample_profile(), Metric::LiveBytes, "heapscope live bytes");
        assert_eq!(a, b);
        check_golden("flamegraph_live.svg", &a);
    }

    #[test]
    fn lines_golden() {
        let mut out = Vec::new();
        let opts = SvgOptions {
            metric: Metric::LiveBytes,
            labels: Labels { lines: true },
            title: "lines".to_string(),
        };
        write_svg(&sample_profile_with_lines(), &opts, &mut out).expect("render svg");
        let svg = String::from_utf8(out).expect("utf-8");
        assert!(svg.contains("map_anon (leaks.c:78, inlined)"));
        check_golden("flamegraph_lines.svg", &svg);
    }

    #[test]
    fn empty_profile_gives_valid_svg() {
        let svg = render(&Profile::default(), Metric::LiveBytes, "a <b> & c");
        assert!(svg.contains("<svg"));
        assert!(svg.contains("no samples"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        check_golden("flamegraph_empty.svg", &svg);
    }
}

//! Folded stacks (`frame;frame;leaf COUNT`), the input format of inferno and
//! flamegraph.pl.

use std::io::{self, Write};

use crate::profile::{Metric, Profile};

use super::{merge_sites, Labels};

/// What folded output shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldedOptions {
    /// The number each stack is weighted by.
    pub metric: Metric,
    /// How frames are labelled (`--lines`).
    pub labels: Labels,
}

/// The folded lines of `profile` weighted by `opts.metric`: one per distinct
/// (stack, API), root→leaf with the allocator API as the last frame, sorted
/// by stack text, zero-weight stacks omitted. No trailing newlines.
pub fn folded_lines(profile: &Profile, opts: &FoldedOptions) -> Vec<String> {
    let metric = opts.metric;
    merge_sites(profile, opts.labels)
        .into_iter()
        .filter_map(|site| {
            let weight = metric.of(&site.stats);
            (weight > 0).then(|| format!("{} {weight}", site.folded_stack()))
        })
        .collect()
}

/// Writes `profile` in folded format (see [`folded_lines`]).
pub fn write_folded(
    profile: &Profile,
    opts: &FoldedOptions,
    out: &mut impl Write,
) -> io::Result<()> {
    for line in folded_lines(profile, opts) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::testdata::{check_golden, sample_profile, sample_profile_with_lines};

    fn render(metric: Metric) -> String {
        let mut out = Vec::new();
        write_folded(
            &sample_profile(),
            &FoldedOptions {
                metric,
                ..Default::default()
            },
            &mut out,
        )
        .expect("write to vec");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn golden_live_bytes() {
        check_golden("folded_live.txt", &render(Metric::LiveBytes));
    }

    #[test]
    fn golden_alloc_bytes() {
        check_golden("folded_alloc_bytes.txt", &render(Metric::AllocBytes));
    }

    #[test]
    fn golden_lines() {
        let mut out = Vec::new();
        let opts = FoldedOptions {
            metric: Metric::LiveBytes,
            labels: Labels { lines: true },
        };
        write_folded(&sample_profile_with_lines(), &opts, &mut out).expect("write to vec");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("leak_mmap (leaks.c:82);map_anon (leaks.c:78, inlined);mmap"));
        check_golden("folded_lines.txt", &text);
    }

    #[test]
    fn golden_allocs() {
        check_golden("folded_allocs.txt", &render(Metric::Allocs));
    }

    #[test]
    fn lines_are_parsable_and_sorted() {
        let text = render(Metric::LiveBytes);
        let stacks: Vec<&str> = text
            .lines()
            .map(|l| {
                // The count is the last space-separated token; frames may hold spaces.
                let (stack, count) = l.rsplit_once(' ').expect("count");
                assert!(count.parse::<u64>().is_ok_and(|c| c > 0), "{l}");
                stack
            })
            .collect();
        let mut sorted = stacks.clone();
        sorted.sort();
        assert_eq!(stacks, sorted);
        assert!(text.contains("main;run_sites;leak_malloc;malloc 10000\n"));
        assert!(text.contains("[unknown stack];mmap 1048576\n"));
        assert!(text.contains("main;run_sites;a:b;deep1"));
        assert!(!text.contains("transient"), "zero live bytes is omitted");
        assert!(render(Metric::Allocs).contains("main;run_sites;transient;malloc 90\n"));
    }

    #[test]
    fn empty_profile_is_empty() {
        let mut out = Vec::new();
        write_folded(&Profile::default(), &FoldedOptions::default(), &mut out).expect("write");
        assert!(out.is_empty());
    }
}

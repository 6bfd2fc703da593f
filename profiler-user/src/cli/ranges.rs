//! Value ranges shared by several subcommands' options.

/// `--top`: at least one row; a million is more than any report holds.
pub fn top_range() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000)
}

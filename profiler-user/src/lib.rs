//! heapscope: an eBPF heap profiler for running processes.
//!
//! Data flows one way: `probes` (load + attach) → `events` / `aggregate`
//! (read kernel maps) → `profile` (symbolized snapshot) → `views`.
pub mod addr;
pub mod aggregate;
pub mod analysis;
pub mod api;
pub mod cli;
pub mod debuginfod;
pub mod events;
pub mod exactness;
pub mod http;
pub mod intern;
pub mod launch;
pub mod overhead;
pub mod phases;
pub mod probes;
pub mod process;
pub mod profile;
pub mod push;
pub mod record;
pub mod report;
pub mod resymbolize;
pub mod selfmem;
pub mod server;
pub mod session;
pub mod symbolize;
#[cfg(test)]
mod testing;
pub mod timeline;
pub mod units;
pub mod unwind;
pub mod views;

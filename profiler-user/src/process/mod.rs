//! Facts about the target process read from /proc.

pub mod arenas;
pub mod cgroup;
mod files;
pub mod maps;
pub mod memory;
pub mod modules;
pub mod priority;
pub mod procfs;
mod region;
pub mod vm;

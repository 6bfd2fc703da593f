//! heapscope: an eBPF heap profiler for running processes.

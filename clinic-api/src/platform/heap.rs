//! The process's heap, as its allocator sees it.
//!
//! jemalloc is the allocator of every binary that links this crate: the `clinic` binary names it
//! its global allocator, and the crate's jemalloc is built unprefixed, so it also serves
//! `malloc` for C code (SQLite, libjpeg-turbo) and for Rust's `System` allocator in tests.
//! Under glibc malloc the server's RSS crept over join/leave churn while its live heap stayed
//! flat (docs/performance.md, the churn section): glibc kept freed memory, fragmented over its
//! per-thread arenas. jemalloc keeps each size class on its own pages and gives dirty pages back
//! after a decay delay (10 s), purging as it allocates; `MALLOC_CONF` tunes it at run time.

use tikv_jemalloc_ctl::{epoch, stats};

/// Bytes, read at one moment (jemalloc's statistics are refreshed by advancing its epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Allocated by the program and not yet freed.
    pub allocated: u64,
    /// In pages that hold at least one allocation (allocated plus fragmentation).
    pub active: u64,
    /// Physically resident in the allocator's mappings (active, dirty pages not yet purged,
    /// metadata).
    pub resident: u64,
    /// The allocator's own bookkeeping.
    pub metadata: u64,
    /// Address space kept mapped but given back to the OS (not resident).
    pub retained: u64,
}

/// The allocator's statistics now; `None` if they cannot be read.
pub fn stats() -> Option<HeapStats> {
    epoch::advance().ok()?;
    Some(HeapStats {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        metadata: stats::metadata::read().ok()? as u64,
        retained: stats::retained::read().ok()? as u64,
    })
}

/// Sets the `process_heap_*_bytes` gauges (called when /metrics is rendered).
pub fn export() {
    if let Some(s) = stats() {
        metrics::gauge!("process_heap_allocated_bytes").set(s.allocated as f64);
        metrics::gauge!("process_heap_active_bytes").set(s.active as f64);
        metrics::gauge!("process_heap_resident_bytes").set(s.resident as f64);
        metrics::gauge!("process_heap_metadata_bytes").set(s.metadata as f64);
        metrics::gauge!("process_heap_retained_bytes").set(s.retained as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tikv_jemalloc_ctl::thread;

    /// jemalloc serves this test's allocations although they go through `System` (this test
    /// binary names no global allocator): only an unprefixed jemalloc, the process's `malloc`,
    /// sees them. Its per-thread counters are read, so tests on other threads do not matter.
    #[test]
    fn the_allocator_counts_what_the_program_holds() {
        let (alloc, dealloc) = (
            thread::allocatedp::read().expect("jemalloc's thread counters"),
            thread::deallocatedp::read().unwrap(),
        );
        let (a0, d0) = (alloc.get(), dealloc.get());
        let held: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 1 << 20]).collect();
        let a1 = alloc.get();
        assert!(a1 - a0 >= 64 << 20, "64 MiB held, allocated {a0} -> {a1}");
        drop(held);
        let d1 = dealloc.get();
        assert!(
            d1 - d0 >= 64 << 20,
            "64 MiB freed, deallocated {d0} -> {d1}"
        );
        let s = stats().expect("jemalloc statistics");
        assert!(s.allocated > 0 && s.active >= s.allocated, "{s:?}");
    }
}

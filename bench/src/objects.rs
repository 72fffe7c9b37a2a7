//! The bench's own BPF objects, built by its build script from lb-ebpf with feature `bench`.

/// The benchmark harness object (lb-ebpf's `bench-harness` bin), for `lb-bench bench micro`:
/// BPF_PROG_TEST_RUN only, never attached.
pub static HARNESS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-harness"));

/// The traffic object (lb-ebpf's `bench-traffic` bin, `src/sink.rs`) for `lb-bench gen` and
/// `bench pps`: the live-frame generator, the sink and the redirect-only ceiling.
pub static TRAFFIC_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-traffic"));

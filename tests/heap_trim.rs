//! `allocator::trim` gives back the pages of a hole in the middle of the
//! heap, which freeing alone leaves resident. A process of its own (this
//! file's one test): it reads the process's resident memory.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_trim_returns_a_hole_in_the_heap() {
    use cohortflow::allocator::{MmapThreshold, fix_mmap_threshold, trim};
    use std::hint::black_box;

    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number of KiB")
    }

    if fix_mmap_threshold() == MmapThreshold::FromEnvironment {
        // The environment's threshold may map the blocks below on their own.
        return;
    }
    // Blocks of 512 KiB come from the heap at the process's threshold;
    // eight, one after the other, freed together, make a hole of 4 MiB
    // that a live block after them keeps from the heap's top.
    const BLOCK: usize = 512 << 10;
    let blocks: Vec<Vec<u8>> = (0..8).map(|i| black_box(vec![i as u8 + 1; BLOCK])).collect();
    let guard = black_box(vec![9u8; 4096]);
    drop(blocks);
    let before = resident_kib();
    assert!(trim(), "nothing was returned");
    let after = resident_kib();
    assert!(before >= after + 3 * 1024, "the hole stayed resident: {before} KiB before the trim, {after} KiB after");
    drop(guard);
}

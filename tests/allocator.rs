//! The allocator's mmap threshold stays where the process fixes it. A
//! process of its own (this file's one test): the threshold is global.

// mallinfo2 reads the allocator's counts; it has no safe interface.
#![allow(unsafe_code)]

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_freed_mapped_block_does_not_raise_the_mmap_threshold() {
    use cohortflow::allocator::{MMAP_THRESHOLD, MmapThreshold, fix_mmap_threshold};
    use std::hint::black_box;

    let mapped = || {
        // SAFETY: mallinfo2 takes nothing and returns counts by value.
        unsafe { libc::mallinfo2() }.hblks
    };
    let threshold = fix_mmap_threshold();
    if std::env::var_os("GLIBC_TUNABLES").is_some_and(|t| t.to_string_lossy().contains("glibc.malloc.mmap_threshold")) {
        assert_eq!(threshold, MmapThreshold::FromEnvironment);
        return;
    }
    assert_eq!(threshold, MmapThreshold::Fixed);
    // By default, freeing a mapped block raises the threshold to its size
    // (below 32 MiB), and a block of twice the fixed threshold (16 MiB)
    // then comes from the heap.
    const FREED: usize = 24 << 20;
    const { assert!(2 * MMAP_THRESHOLD < FREED) };
    drop(black_box(vec![1u8; FREED]));
    let before = mapped();
    let block = black_box(vec![1u8; 2 * MMAP_THRESHOLD]);
    assert_eq!(mapped(), before + 1, "a block over the threshold is not mapped on its own");
    drop(block);
    assert_eq!(mapped(), before, "a freed block over the threshold is not unmapped");
    // And one below it comes from the heap, to be reused.
    let small = black_box(vec![1u8; MMAP_THRESHOLD / 2]);
    assert_eq!(mapped(), before, "a block below the threshold is mapped");
    drop(small);
}

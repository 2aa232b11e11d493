//! A counting allocator: the system allocator, with a count of live heap
//! bytes and of live blocks per requested size.
//!
//! A binary that wants it declares
//! `#[global_allocator] static ALLOC: common::alloc::Counting = common::alloc::Counting;`;
//! in the others the counts stay at zero.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering::Relaxed},
};

/// Live blocks per size, in 16-byte steps up to 4 KiB, then one bucket.
static BLOCKS: [AtomicIsize; 257] = [const { AtomicIsize::new(0) }; 257];
static BYTES: AtomicIsize = AtomicIsize::new(0);

/// Forwards to [`System`], counting.
pub struct Counting;

fn bucket(size: usize) -> usize {
    size.div_ceil(16).min(256)
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BLOCKS[bucket(layout.size())].fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as isize, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BLOCKS[bucket(layout.size())].fetch_sub(1, Relaxed);
        BYTES.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BLOCKS[bucket(layout.size())].fetch_sub(1, Relaxed);
        BLOCKS[bucket(new_size)].fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Live heap bytes (as requested, without the allocator's overhead).
pub fn live_bytes() -> isize {
    BYTES.load(Relaxed)
}

/// `bytes size:blocks ...` for the sizes in use, one line.
pub fn snapshot() -> String {
    let mut out = live_bytes().to_string();
    for (i, live) in BLOCKS.iter().enumerate() {
        let n = live.load(Relaxed);
        if n != 0 {
            out += &format!(" {}:{n}", i * 16);
        }
    }
    out
}

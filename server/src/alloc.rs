//! The global allocator of the router and the bench: mimalloc, asked for
//! alignment only when a type needs more than mimalloc gives every block.
//!
//! The `mimalloc` crate's allocator passes every request to
//! `mi_malloc_aligned`, the word-aligned ones too. mimalloc serves those
//! from its fast path only while the size class has a free block ready;
//! when the free list runs dry, a size that is not a power of two (48,
//! 80, 96 bytes...) falls to its over-allocating path, a larger block with
//! the pointer moved inside it, and stays there: the plain path that
//! would refill the size class's free list is never called. quinn's
//! per-stream and per-packet allocations took that path about 1.4 times
//! per routed event, at some 130 instructions each against about 20
//! (BENCHMARKS.md, "Sixth pass"). Every mimalloc block is word-aligned,
//! so a request aligned to a word or less goes to `mi_malloc`, and only
//! the rest to the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The alignment of every block mimalloc returns: one machine word.
const WORD: usize = std::mem::align_of::<usize>();

/// mimalloc, through its plain calls where the alignment allows.
#[derive(Debug, Clone, Copy, Default)]
pub struct MiMalloc;

// SAFETY: each call returns a block of at least `layout.size()` bytes
// aligned to `layout.align()` (mimalloc's plain calls word-align every
// block, and larger alignments go to its aligned calls), or null when
// memory runs out; `dealloc` and `realloc` take only pointers these calls
// returned, which `mi_free` and `mi_realloc*` accept whichever call made
// them.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; any size and power-of-two alignment.
        unsafe {
            if layout.align() <= WORD {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if layout.align() <= WORD {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the new
        // block keeps its alignment (word-aligned, or asked for again).
        unsafe {
            if layout.align() <= WORD {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a Rust type asks for comes back aligned,
    /// writable to its end, and grows and shrinks with its bytes kept.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes_through_realloc() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1usize, 3, 8, 24, 48, 80, 96, 100, 1000, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: a non-zero size; the block is written within its
                // size, then freed with its layout, once.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null(), "{size} bytes, align {align}");
                    assert_eq!(p as usize % align, 0, "{size} bytes, align {align}");
                    std::ptr::write_bytes(p, 0xA5, size);
                    let bigger = size * 3;
                    let q = a.realloc(p, layout, bigger);
                    assert_eq!(q as usize % align, 0, "realloc of {size}, align {align}");
                    assert!(std::slice::from_raw_parts(q, size)
                        .iter()
                        .all(|&b| b == 0xA5));
                    let layout = Layout::from_size_align(bigger, align).expect("layout");
                    let r = a.realloc(q, layout, size / 2 + 1);
                    assert_eq!(r as usize % align, 0, "shrink of {size}, align {align}");
                    assert!(std::slice::from_raw_parts(r, size / 2 + 1)
                        .iter()
                        .all(|&b| b == 0xA5));
                    a.dealloc(
                        r,
                        Layout::from_size_align(size / 2 + 1, align).expect("layout"),
                    );

                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed {bigger}, align {align}");
                    assert!(std::slice::from_raw_parts(z, bigger)
                        .iter()
                        .all(|&b| b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}

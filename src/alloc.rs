//! Small blocks from mimalloc, buffers from the system allocator.
//!
//! mimalloc's per-thread free lists suit the many short-lived small objects
//! of a call (header maps, frames, futures): about a quarter less CPU per
//! unary call than glibc when it was adopted. For buffers of a page or more
//! (TLS records, the codec's read buffers) its sharded free lists hand out a
//! block freed a while ago, cold in cache, where glibc hands back the one just
//! freed. Streaming through mimalloc alone, the kernel's copy into our read
//! buffers and rustls' copy out of them cost 5× per byte what they cost a
//! byte-copy tunnel (perf); with this split (and the relay's read-ahead bound,
//! `relay::QUEUE_BYTES`) the gateway's CPU per streamed GiB fell from 3.06 s
//! to 1.69 s (scripts/ab, 8 alternating runs), while glibc for every block
//! would cost about 5% more CPU per unary call. mimalloc is built without
//! transparent huge pages, which would otherwise raise the resident memory of
//! 10,000 idle connections by half.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Blocks of this size or more come from the system allocator.
pub const BUFFER: usize = 4 << 10;

/// Whether a block of `size` bytes comes from the system allocator: the one
/// choice every method below makes, so a block always returns to its maker.
fn system(size: usize) -> bool {
    size >= BUFFER
}

/// The gateway binary's global allocator (see the module).
pub struct Split;

// SAFETY: each block is freed and resized by the allocator that made it. The
// choice (`system`) depends only on the layout's size, and GlobalAlloc's
// callers must pass `dealloc` and `realloc` the layout the block was made (or
// last resized) with. A resize that crosses BUFFER moves the block: a new one from the other
// allocator (`new` with the old alignment is a valid layout, as `realloc`'s
// contract requires), the smaller of the two sizes copied (distinct blocks
// cannot overlap), the old one freed with its own layout.
unsafe impl GlobalAlloc for Split {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if system(l.size()) {
            System.alloc(l)
        } else {
            MiMalloc.alloc(l)
        }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if system(l.size()) {
            System.alloc_zeroed(l)
        } else {
            MiMalloc.alloc_zeroed(l)
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if system(l.size()) {
            System.dealloc(p, l)
        } else {
            MiMalloc.dealloc(p, l)
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        match (system(l.size()), system(new)) {
            (true, true) => System.realloc(p, l, new),
            (false, false) => MiMalloc.realloc(p, l, new),
            _ => {
                let moved = self.alloc(Layout::from_size_align_unchecked(new, l.align()));
                if !moved.is_null() {
                    std::ptr::copy_nonoverlapping(p, moved, l.size().min(new));
                    self.dealloc(p, l);
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether mimalloc made the block at `p`.
    fn mimalloc_owns(p: *mut u8) -> bool {
        // SAFETY: a lookup of the address in mimalloc's region map; any
        // pointer may be asked about.
        unsafe { libmimalloc_sys::mi_is_in_heap_region(p.cast()) }
    }

    /// Fills a fresh block from `Split`, resizes it and checks the bytes kept
    /// and which allocator holds it before and after.
    fn resize(from: usize, to: usize, align: usize) {
        let l = Layout::from_size_align(from, align).unwrap();
        // SAFETY: `l` has a non-zero size; the block is written within its
        // size, resized with the layout it was made with, read within the
        // smaller size and freed with its final layout.
        unsafe {
            let p = Split.alloc(l);
            assert!(!p.is_null());
            assert_eq!(mimalloc_owns(p), from < BUFFER, "{from} bytes made by");
            for i in 0..from {
                *p.add(i) = (i % 251) as u8;
            }
            let q = Split.realloc(p, l, to);
            assert!(!q.is_null());
            assert_eq!(q as usize % align, 0, "{from} -> {to}: alignment kept");
            assert_eq!(mimalloc_owns(q), to < BUFFER, "{from} -> {to}: held by");
            for i in 0..from.min(to) {
                assert_eq!(*q.add(i), (i % 251) as u8, "{from} -> {to}: byte {i}");
            }
            Split.dealloc(q, Layout::from_size_align(to, align).unwrap());
        }
    }

    #[test]
    fn resizes_across_the_boundary_keep_the_bytes_and_the_alignment() {
        for align in [1, 8, 64, 4096] {
            for (from, to) in [
                (100, BUFFER - 1),
                (100, BUFFER),
                (BUFFER - 1, BUFFER),
                (BUFFER, BUFFER - 1),
                (64 << 10, 10),
                (10, 64 << 10),
                (BUFFER, 1 << 20),
            ] {
                resize(from, to, align);
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_on_both_sides() {
        for size in [16, BUFFER - 1, BUFFER, 100 << 10] {
            let l = Layout::from_size_align(size, 16).unwrap();
            // SAFETY: non-zero size; read within it; freed with its layout.
            unsafe {
                let p = Split.alloc_zeroed(l);
                assert!(!p.is_null());
                assert_eq!(mimalloc_owns(p), size < BUFFER, "{size} bytes made by");
                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                Split.dealloc(p, l);
            }
        }
    }
}

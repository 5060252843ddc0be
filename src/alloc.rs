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
//!
//! The `mimalloc` crate passes every request to mimalloc's aligned calls. In
//! mimalloc 3 those serve a size that is not a power of two (24, 48, 80 bytes,
//! most of a call's blocks) by over-allocating and aligning within, at about
//! five times the instructions of a plain `mi_malloc` and in a larger block
//! (the same finding as mimalloc_rust's open pull request 170). Requests that
//! a plain block satisfies anyway go to the plain calls here.

use std::alloc::{GlobalAlloc, Layout, System};

use libmimalloc_sys::{mi_free, mi_malloc, mi_realloc, mi_zalloc};
use mimalloc::MiMalloc;

/// Blocks of this size or more come from the system allocator.
pub const BUFFER: usize = 4 << 10;

/// Whether a block of `size` bytes comes from the system allocator: the one
/// choice every method below makes, so a block always returns to its maker.
fn system(size: usize) -> bool {
    size >= BUFFER
}

/// mimalloc's guaranteed alignment for a plain block (`MI_MAX_ALIGN_SIZE`).
/// Its size classes are multiples of 8, and of 16 above 16, and a page's
/// first block is 16-aligned: a plain block of `size` bytes is aligned to any
/// power of two up to 16 and up to `size`.
const PLAIN_ALIGN: usize = 16;

/// Whether a plain mimalloc block of `size` bytes satisfies `align`.
fn plain(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

fn aligned(p: *mut u8, align: usize) -> bool {
    p as usize & (align - 1) == 0
}

/// mimalloc's half of [`Split`]: plain calls where they satisfy the layout
/// (checked on every block, so no layout ever rests on the reasoning at
/// [`PLAIN_ALIGN`] alone), aligned calls otherwise.
struct Mi;

impl Mi {
    unsafe fn alloc(l: Layout, zero: bool) -> *mut u8 {
        if plain(l.size(), l.align()) {
            // SAFETY: plain allocation of a non-zero size (GlobalAlloc's
            // callers never ask for zero bytes); a null result is returned
            // as is (`aligned` holds for it).
            let p = unsafe {
                if zero {
                    mi_zalloc(l.size())
                } else {
                    mi_malloc(l.size())
                }
            }
            .cast::<u8>();
            if aligned(p, l.align()) {
                return p;
            }
            // SAFETY: `p` was just made by mimalloc and is not used again.
            unsafe { mi_free(p.cast()) };
        }
        // SAFETY: the layout is the caller's, as GlobalAlloc requires.
        unsafe {
            if zero {
                MiMalloc.alloc_zeroed(l)
            } else {
                MiMalloc.alloc(l)
            }
        }
    }

    unsafe fn realloc(p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if !plain(new, l.align()) {
            // SAFETY: as GlobalAlloc::realloc's caller promised.
            return unsafe { MiMalloc.realloc(p, l, new) };
        }
        // SAFETY: `p` is a live mimalloc block (plain or aligned: mimalloc
        // finds the start of either) and `new` is non-zero.
        let q = unsafe { mi_realloc(p.cast(), new) }.cast::<u8>();
        if aligned(q, l.align()) {
            return q;
        }
        // Not reached with mimalloc's size classes; if it were, the bytes
        // move once more, into an aligned block. `p` is gone (mi_realloc
        // moved it), so a failure here cannot return null, which would tell
        // the caller `p` is still theirs: it aborts.
        // SAFETY: `to` is a valid layout (realloc's contract: `new` rounded
        // up to the alignment does not overflow) of non-zero size; `q` holds
        // `min(old, new)` valid bytes and is freed after the copy.
        unsafe {
            let to = Layout::from_size_align_unchecked(new, l.align());
            let r = MiMalloc.alloc(to);
            if r.is_null() {
                std::process::abort();
            }
            std::ptr::copy_nonoverlapping(q, r, l.size().min(new));
            mi_free(q.cast());
            r
        }
    }
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
            Mi::alloc(l, false)
        }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if system(l.size()) {
            System.alloc_zeroed(l)
        } else {
            Mi::alloc(l, true)
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if system(l.size()) {
            System.dealloc(p, l)
        } else {
            mi_free(p.cast())
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        match (system(l.size()), system(new)) {
            (true, true) => System.realloc(p, l, new),
            (false, false) => Mi::realloc(p, l, new),
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
    fn plain_blocks_meet_every_alignment_they_are_used_for() {
        // The reasoning at PLAIN_ALIGN, checked against this build of
        // mimalloc: were it wrong, `Mi` would still hand out aligned blocks
        // (it checks each one), but by the slow path.
        let mut held = Vec::new();
        for size in 1..BUFFER {
            for align in [1, 2, 4, 8, 16].into_iter().filter(|&a| plain(size, a)) {
                for _ in 0..3 {
                    // SAFETY: plain allocation of a non-zero size, freed below.
                    let p = unsafe { mi_malloc(size) }.cast::<u8>();
                    assert!(!p.is_null());
                    assert!(aligned(p, align), "{size} bytes at {p:p}, align {align}");
                    held.push(p);
                }
            }
        }
        for p in held {
            // SAFETY: each was made by mi_malloc above and is freed once.
            unsafe { mi_free(p.cast()) };
        }
    }

    #[test]
    fn blocks_a_plain_call_can_serve_are_not_over_allocated() {
        // The aligned calls serve 48 bytes aligned to 16 from a 64-byte
        // block (48 + 15 rounded up); a plain call from a 48-byte one.
        for (size, align) in [(48, 16), (80, 8)] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size; freed with its layout.
            unsafe {
                let p = Split.alloc(l);
                assert!(!p.is_null() && aligned(p, align));
                assert_eq!(
                    libmimalloc_sys::mi_usable_size(p.cast()),
                    libmimalloc_sys::mi_good_size(size),
                    "{size} bytes aligned to {align}"
                );
                Split.dealloc(p, l);
            }
        }
    }

    #[test]
    fn alignments_a_plain_block_does_not_promise_still_hold() {
        // Larger than 16, or larger than the block: the aligned calls, for
        // new blocks and for resizes in and out of the plain path.
        for (size, align) in [(8, 16), (24, 32), (100, 64), (64, 4096), (1, 8)] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size; freed with its layout.
            unsafe {
                let p = Split.alloc(l);
                assert!(!p.is_null() && aligned(p, align), "{size}/{align}");
                Split.dealloc(p, l);
                let p = Split.alloc_zeroed(l);
                assert!(!p.is_null() && aligned(p, align), "{size}/{align} zeroed");
                Split.dealloc(p, l);
            }
        }
        for (from, to, align) in [(8, 32, 16), (32, 8, 16), (16, 3000, 16), (3000, 12, 16)] {
            resize(from, to, align);
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

//! A counting global allocator, for the memory figures.
//!
//! A binary opts in with
//! `#[global_allocator] static A: conpool_bench::alloc::Counting = conpool_bench::alloc::Counting;`.
//! Counting is off until [`enable`] is called, so timing runs pay one
//! relaxed load per allocation and nothing else. While on, it keeps the
//! bytes live (allocated minus freed, a realloc counting its growth) and
//! the number of allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting while [`enable`]d.
pub struct Counting;

// SAFETY: every method passes its arguments unchanged to the same method of
// `System`, which implements `GlobalAlloc` soundly, and returns `System`'s
// result unchanged; so each method meets exactly the contract `System`'s
// does, and the caller's obligations (a valid layout, a pointer this
// allocator returned with the layout it was made with) are passed on
// intact. Besides that, the methods only update atomic counters: they
// never read or write the memory, and they never allocate (which would
// re-enter the allocator).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `alloc` are `System.alloc`'s.
        let ptr = unsafe { System.alloc(layout) };
        count_allocation(ptr, layout.size() as isize);
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `alloc_zeroed` are
        // `System.alloc_zeroed`'s.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        count_allocation(ptr, layout.size() as isize);
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`,
        // with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        if ENABLED.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and the caller guarantees `new_size`
        // is valid for `layout`'s alignment.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        count_allocation(new, new_size as isize - layout.size() as isize);
        new
    }
}

/// Counts an allocation (or reallocation) that returned `ptr` and changed
/// the live bytes by `grew`, when counting is on and it succeeded. Safe: it
/// only compares the pointer with null.
fn count_allocation(ptr: *mut u8, grew: isize) {
    if !ptr.is_null() && ENABLED.load(Ordering::Relaxed) {
        LIVE.fetch_add(grew, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts counting from zero.
pub fn enable() {
    LIVE.store(0, Ordering::SeqCst);
    ALLOCS.store(0, Ordering::SeqCst);
    ENABLED.store(true, Ordering::SeqCst);
}

/// Stops counting; the counters keep their values.
pub fn disable() {
    ENABLED.store(false, Ordering::SeqCst);
}

/// Whether this process counts at all (a binary that did not install
/// [`Counting`] always reads zero).
pub fn installed() -> bool {
    enable();
    let probe = std::hint::black_box(Box::new(0u64));
    let seen = allocations() > 0;
    drop(probe);
    disable();
    seen
}

/// Bytes allocated and not freed since [`enable`].
pub fn live_bytes() -> isize {
    LIVE.load(Ordering::SeqCst)
}

/// Allocations (and reallocations) since [`enable`].
pub fn allocations() -> usize {
    ALLOCS.load(Ordering::SeqCst)
}

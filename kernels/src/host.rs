//! Host memory for the large arrays that decode streams every token: weights and recurrent states.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use bytemuck::Pod;

/// A fixed-length array in host memory. From [`HUGE_MIN_BYTES`] up it lives in a mapping of its
/// own, aligned to 2 MB and (on Linux) advised into transparent huge pages, so a pass over it
/// walks one TLB entry per 2 MB instead of one per 4 KB page (about 15% more read bandwidth:
/// docs/performance.md). Smaller arrays stay on the heap.
pub struct HostArray<T: Pod> {
    repr: Repr<T>,
}

enum Repr<T> {
    Heap(Vec<T>),
    /// `len` values at byte `offset` (a multiple of 2 MB from the mapping's start address) of
    /// an anonymous mapping.
    Mapped { map: memmap2::MmapMut, offset: usize, len: usize, _values: PhantomData<T> },
}

/// Arrays of at least this many bytes get a huge-page mapping (a smaller one would hold no whole
/// huge page).
pub const HUGE_MIN_BYTES: usize = HUGE_PAGE;

const HUGE_PAGE: usize = 2 << 20;

impl<T: Pod> HostArray<T> {
    /// `len` zeros, written (not only mapped): a mapping's pages read before they are written
    /// fault twice, the second time a copy-on-write that flushes the other cores' TLBs.
    pub fn zeroed(len: usize) -> HostArray<T> {
        let mut array = HostArray::untouched_zeros(len);
        std::hint::black_box(&mut *array).fill(T::zeroed());
        array
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[T]) -> HostArray<T> {
        let mut array = HostArray::untouched_zeros(values.len());
        array.copy_from_slice(values);
        array
    }

    /// `values`, moved into huge pages when large enough (a copy), else kept as they are.
    pub fn from_vec(values: Vec<T>) -> HostArray<T> {
        if std::mem::size_of_val(values.as_slice()) < HUGE_MIN_BYTES {
            return HostArray { repr: Repr::Heap(values) };
        }
        HostArray::from_slice(&values)
    }

    /// The values of `values`, written straight into the array (no intermediate `Vec`).
    pub fn from_exact_iter(values: impl ExactSizeIterator<Item = T>) -> HostArray<T> {
        let len = values.len();
        let mut array = HostArray::untouched_zeros(len);
        let mut written = 0;
        for (slot, value) in array.iter_mut().zip(values) {
            *slot = value;
            written += 1;
        }
        assert_eq!(written, len, "ExactSizeIterator yielded fewer values than its len");
        array
    }

    /// `len` zeros on the heap whatever their size (working buffers, resized often).
    pub fn heap_zeros(len: usize) -> HostArray<T> {
        HostArray { repr: Repr::Heap(vec![T::zeroed(); len]) }
    }

    /// Makes the array hold `len` values, zeros past the old end: a heap array keeps its
    /// allocation when large enough; a mapped one is replaced when its length changes.
    pub fn resize(&mut self, len: usize) {
        match &mut self.repr {
            Repr::Heap(values) => values.resize(len, T::zeroed()),
            Repr::Mapped { len: old, .. } if *old == len => {}
            Repr::Mapped { .. } => *self = HostArray::zeroed(len),
        }
    }

    /// Whether the array lives in its own huge-page-advised mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.repr, Repr::Mapped { .. })
    }

    /// `len` values of zero bytes, not yet touched: callers write every value before handing the
    /// array out. Falls back to the heap when the OS refuses the mapping.
    fn untouched_zeros(len: usize) -> HostArray<T> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).expect("array size overflows usize");
        if bytes >= HUGE_MIN_BYTES {
            // One huge page more than asked, so a 2 MB boundary lies within the first one.
            if let Ok(map) = memmap2::MmapMut::map_anon(bytes + HUGE_PAGE) {
                let offset = map.as_ptr().align_offset(HUGE_PAGE);
                // Only a hint: a kernel without THP leaves 4 KB pages, which still work.
                #[cfg(target_os = "linux")]
                let _ = map.advise_range(memmap2::Advice::HugePage, offset, bytes);
                return HostArray { repr: Repr::Mapped { map, offset, len, _values: PhantomData } };
            }
        }
        HostArray { repr: Repr::Heap(vec![T::zeroed(); len]) }
    }
}

impl<T: Pod> Deref for HostArray<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.repr {
            Repr::Heap(values) => values,
            Repr::Mapped { map, offset, len, .. } => bytemuck::cast_slice(&map[*offset..*offset + len * std::mem::size_of::<T>()]),
        }
    }
}

impl<T: Pod> DerefMut for HostArray<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.repr {
            Repr::Heap(values) => values,
            Repr::Mapped { map, offset, len, .. } => bytemuck::cast_slice_mut(&mut map[*offset..*offset + *len * std::mem::size_of::<T>()]),
        }
    }
}

impl<T: Pod> Clone for HostArray<T> {
    fn clone(&self) -> HostArray<T> {
        match &self.repr {
            Repr::Heap(values) => HostArray { repr: Repr::Heap(values.clone()) },
            Repr::Mapped { .. } => HostArray::from_slice(self),
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for HostArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostArray").field("len", &self.len()).field("mapped", &self.is_mapped()).finish()
    }
}

impl<T: Pod + PartialEq> PartialEq for HostArray<T> {
    fn eq(&self, other: &HostArray<T>) -> bool {
        **self == **other
    }
}

impl<T: Pod> From<Vec<T>> for HostArray<T> {
    fn from(values: Vec<T>) -> HostArray<T> {
        HostArray::from_vec(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_arrays_stay_on_the_heap_and_large_ones_are_mapped_aligned() {
        let small = HostArray::from_vec(vec![1.5f32; 1000]);
        assert!(!small.is_mapped());
        assert_eq!(&*small, &[1.5f32; 1000][..]);

        // Just over a huge page, odd length: mapped, 2 MB aligned, every value intact.
        let len = HUGE_MIN_BYTES / 4 + 7;
        let values: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut large = HostArray::from_vec(values.clone());
        assert!(large.is_mapped());
        assert_eq!(large.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(&*large, &values[..]);
        large[len - 1] = 42.0;
        let copy = large.clone();
        assert!(copy.is_mapped() && copy == large && copy[len - 1] == 42.0);

        let halves = HostArray::from_exact_iter(values.iter().map(|v| v * 0.5));
        assert!(halves.is_mapped() && halves.len() == len && halves[len - 2] == values[len - 2] * 0.5);
        assert_eq!(&*HostArray::from_exact_iter([1u16, 2, 3].into_iter()), &[1, 2, 3][..]);

        let zeros = HostArray::<u16>::zeroed(HUGE_MIN_BYTES);
        assert!(zeros.is_mapped() && zeros.len() == HUGE_MIN_BYTES && zeros.iter().all(|&v| v == 0));
        assert!(HostArray::<half::f16>::zeroed(0).is_empty());
    }
}

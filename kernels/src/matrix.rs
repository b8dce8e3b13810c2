use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::HostArray;

/// A weight matrix `[rows, cols]`, row-major, as [`crate::Backend::linear`] takes it: f32, bf16
/// or f16 (the 16-bit types halve the memory and the bandwidth of decode; every backend widens to
/// f32 inside its kernels and accumulates in f32).
///
/// A backend that computes away from host memory (a GPU) keeps its own copy of the matrix, made
/// on first use and dropped with the matrix: [`Matrix::resident`]. The copy is tagged with the
/// backend instance that made it, so a matrix used by two devices is never served the other's
/// buffer.
pub struct Matrix {
    data: Storage,
    rows: usize,
    cols: usize,
    resident: Mutex<Option<Resident>>,
}

type Resident = (u64, Arc<dyn Any + Send + Sync>);

/// The values, in huge pages when large (decode streams every weight once per token).
enum Storage {
    F32(HostArray<f32>),
    /// bf16 bit patterns (the top half of an f32).
    Bf16(HostArray<u16>),
    F16(HostArray<half::f16>),
}

/// The element type a [`Matrix`] is held in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightDtype {
    F32,
    Bf16,
    /// IEEE half precision: 10 mantissa bits (bf16 has 7) but a range of only ±65504, so an f32
    /// weight beyond it becomes infinite (`Model::with_weight_dtype` refuses such a model).
    F16,
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::F16 => "f16",
        })
    }
}

/// A matrix's values as stored.
#[derive(Clone, Copy, Debug)]
pub enum Values<'a> {
    F32(&'a [f32]),
    /// bf16 bit patterns: value = `f32::from_bits((bits as u32) << 16)`.
    Bf16(&'a [u16]),
    F16(&'a [half::f16]),
}

/// One bf16 bit pattern as f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f32 to bf16 bits, rounding to nearest even (NaN stays NaN).
pub fn f32_to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    if value.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

impl Matrix {
    /// Panics unless `data.len() == rows * cols` (a caller bug: loaders check shapes first).
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Matrix {
        assert_eq!(data.len(), rows * cols, "matrix data does not hold {rows} x {cols} values");
        Matrix { data: Storage::F32(data.into()), rows, cols, resident: Mutex::new(None) }
    }

    /// The same matrix held as `dtype` (to bf16 or f16: rounded to nearest even, so values that
    /// were of that type already come back exactly; f16 overflows to ±infinity past ±65504).
    pub fn to_dtype(&self, dtype: WeightDtype) -> Matrix {
        let data = match (&self.data, dtype) {
            (Storage::F32(v), WeightDtype::F32) => Storage::F32(v.clone()),
            (Storage::Bf16(v), WeightDtype::Bf16) => Storage::Bf16(v.clone()),
            (Storage::F16(v), WeightDtype::F16) => Storage::F16(v.clone()),
            // Any other pair goes through f32, which holds every bf16 and f16 value exactly.
            (_, WeightDtype::F32) => Storage::F32(self.all_f32().into()),
            (_, WeightDtype::Bf16) => Storage::Bf16(HostArray::from_exact_iter(self.all_f32().into_iter().map(f32_to_bf16))),
            (_, WeightDtype::F16) => Storage::F16(HostArray::from_exact_iter(self.all_f32().into_iter().map(half::f16::from_f32))),
        };
        Matrix { data, rows: self.rows, cols: self.cols, resident: Mutex::new(None) }
    }

    pub fn dtype(&self) -> WeightDtype {
        match self.data {
            Storage::F32(_) => WeightDtype::F32,
            Storage::Bf16(_) => WeightDtype::Bf16,
            Storage::F16(_) => WeightDtype::F16,
        }
    }

    fn all_f32(&self) -> Vec<f32> {
        let mut out = Vec::new();
        self.rows_f32(0..self.rows, &mut out);
        out
    }

    /// Whether every value is finite (a 16-bit copy of an f32 weight past f16's range is not).
    pub fn is_finite(&self) -> bool {
        match &self.data {
            Storage::F32(v) => v.iter().all(|x| x.is_finite()),
            Storage::Bf16(v) => v.iter().all(|&b| bf16_to_f32(b).is_finite()),
            Storage::F16(v) => v.iter().all(|x| x.is_finite()),
        }
    }

    /// The values as stored, row-major.
    pub fn values(&self) -> Values<'_> {
        match &self.data {
            Storage::F32(v) => Values::F32(v),
            Storage::Bf16(v) => Values::Bf16(v),
            Storage::F16(v) => Values::F16(v),
        }
    }

    /// Rows `range` as f32 into `out` (resized to fit).
    pub fn rows_f32(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
        let span = range.start * self.cols..range.end * self.cols;
        out.clear();
        match &self.data {
            Storage::F32(v) => out.extend_from_slice(&v[span]),
            Storage::Bf16(v) => out.extend(v[span].iter().map(|&b| bf16_to_f32(b))),
            Storage::F16(v) => out.extend(v[span].iter().map(|x| x.to_f32())),
        }
    }

    /// Row `i` as f32 into `out` (`cols` long).
    pub fn row_f32(&self, i: usize, out: &mut [f32]) {
        let span = i * self.cols..(i + 1) * self.cols;
        match &self.data {
            Storage::F32(v) => out.copy_from_slice(&v[span]),
            Storage::Bf16(v) => out.iter_mut().zip(&v[span]).for_each(|(o, &b)| *o = bf16_to_f32(b)),
            Storage::F16(v) => out.iter_mut().zip(&v[span]).for_each(|(o, x)| *o = x.to_f32()),
        }
    }

    /// Bytes the values take.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Storage::F32(v) => v.len() * 4,
            Storage::Bf16(v) => v.len() * 2,
            Storage::F16(v) => v.len() * 2,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The copy that backend `owner` keeps of this matrix, made by `make` on first use. `owner`
    /// must identify one backend instance for its whole life (a device buffer means nothing to
    /// another device); when another owner's copy is held, that one is replaced.
    pub fn resident<T: Any + Send + Sync>(&self, owner: u64, make: impl FnOnce(&Matrix) -> T) -> Arc<T> {
        let mut slot = self.resident.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((held_by, copy)) = slot.as_ref() {
            if *held_by == owner {
                if let Ok(copy) = Arc::clone(copy).downcast::<T>() {
                    return copy;
                }
            }
        }
        let copy = Arc::new(make(self));
        *slot = Some((owner, copy.clone() as Arc<dyn Any + Send + Sync>));
        copy
    }
}

impl Clone for Matrix {
    /// Clones the values; a device copy is not shared with the clone.
    fn clone(&self) -> Matrix {
        self.to_dtype(self.dtype())
    }
}

impl fmt::Debug for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Matrix({} x {}, {:?})", self.rows, self.cols, self.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_round_trips() {
        for x in [0.0f32, -0.0, 1.0, -2.5, 3.140625, 1e-30, 6.5e37, f32::INFINITY, f32::NEG_INFINITY] {
            let b = f32_to_bf16(x);
            assert_eq!(bf16_to_f32(b).to_bits() >> 16, b as u32, "{x}");
            assert_eq!(bf16_to_f32(f32_to_bf16(bf16_to_f32(b))), bf16_to_f32(b), "{x}: not a fixed point");
        }
        // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        let m = Matrix::new(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3).to_dtype(WeightDtype::Bf16);
        let mut row = vec![0.0; 3];
        m.row_f32(1, &mut row);
        assert_eq!(row, [4.0, 5.0, 6.0]);
        assert_eq!((m.bytes(), m.dtype()), (12, WeightDtype::Bf16));
    }

    #[test]
    fn f16_rounds_converts_and_flags_overflow() {
        // 1 + 2^-11 is halfway between f16 1 and 1 + 2^-10: ties to even; 65504 is the largest f16.
        let m = Matrix::new(vec![1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, -65504.0, 6.0e-8], 2, 2).to_dtype(WeightDtype::F16);
        let mut row = vec![0.0; 2];
        m.row_f32(0, &mut row);
        assert_eq!(row, [1.0, 1.0 + 2.0 / 1024.0]);
        m.row_f32(1, &mut row);
        assert_eq!(row[0], -65504.0);
        assert!((row[1] - 6.0e-8).abs() < 3.0e-8, "subnormal f16 kept: {}", row[1]);
        assert_eq!((m.bytes(), m.dtype(), m.is_finite()), (8, WeightDtype::F16, true));
        // Every dtype pair converts, and a value exact in both 16-bit types survives all of them.
        let exact = Matrix::new(vec![0.5, -2.0, 3.0, 0.0], 2, 2);
        for a in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16] {
            for b in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16] {
                let back = exact.to_dtype(a).to_dtype(b).to_dtype(WeightDtype::F32);
                assert_eq!(back.all_f32(), [0.5, -2.0, 3.0, 0.0], "{a} -> {b}");
            }
        }
        let big = Matrix::new(vec![1.0e5, 1.0], 1, 2);
        assert!(big.is_finite() && big.to_dtype(WeightDtype::Bf16).is_finite());
        assert!(!big.to_dtype(WeightDtype::F16).is_finite(), "1e5 is past f16's range");
    }
}

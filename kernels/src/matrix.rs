use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A weight matrix `[rows, cols]`, row-major f32, as [`crate::Backend::linear`] takes it.
///
/// A backend that computes away from host memory (a GPU) keeps its own copy of the matrix, made
/// on first use and dropped with the matrix: [`Matrix::resident`]. The copy is tagged with the
/// backend instance that made it, so a matrix used by two devices is never served the other's
/// buffer.
pub struct Matrix {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    resident: Mutex<Option<Resident>>,
}

type Resident = (u64, Arc<dyn Any + Send + Sync>);

impl Matrix {
    /// Panics unless `data.len() == rows * cols` (a caller bug: loaders check shapes first).
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Matrix {
        assert_eq!(data.len(), rows * cols, "matrix data does not hold {rows} x {cols} values");
        Matrix { data, rows, cols, resident: Mutex::new(None) }
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
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
    pub fn resident<T: Any + Send + Sync>(&self, owner: u64, make: impl FnOnce(&[f32]) -> T) -> Arc<T> {
        let mut slot = self.resident.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((held_by, copy)) = slot.as_ref() {
            if *held_by == owner {
                if let Ok(copy) = Arc::clone(copy).downcast::<T>() {
                    return copy;
                }
            }
        }
        let copy = Arc::new(make(&self.data));
        *slot = Some((owner, copy.clone() as Arc<dyn Any + Send + Sync>));
        copy
    }
}

impl Clone for Matrix {
    /// Clones the values; a device copy is not shared with the clone.
    fn clone(&self) -> Matrix {
        Matrix::new(self.data.clone(), self.rows, self.cols)
    }
}

impl fmt::Debug for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Matrix({} x {})", self.rows, self.cols)
    }
}

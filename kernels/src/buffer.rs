//! Arrays that live where an [`Engine`](crate::Engine) computes: host memory for the CPU,
//! device memory for a GPU. The model holds its activations and states in these and hands the
//! engine views of them; it reads their values only through [`Engine::download`](crate::Engine).

use std::any::Any;
use std::fmt;
use std::ops::Range;

use crate::HostArray;

/// An array of f32 in a device's memory, as one engine made it. The engine that made it knows
/// its concrete type ([`DeviceArray::as_any`]); everyone else only reads it back or copies it.
pub trait DeviceArray: Send + Sync {
    /// Values it holds.
    fn len(&self) -> usize;

    /// Whether it holds none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The concrete type, for the engine that made it.
    fn as_any(&self) -> &dyn Any;

    /// Copies values `offset..offset + out.len()` to the host (a blocking read). A device that
    /// failed leaves NaN.
    fn read(&self, offset: usize, out: &mut [f32]);

    /// A copy on the same device (a fork of a state).
    fn duplicate(&self) -> Box<dyn DeviceArray>;
}

/// An array where its engine computes.
pub enum Buffer {
    Host(HostArray<f32>),
    Device(Box<dyn DeviceArray>),
}

impl Buffer {
    /// `len` zeros in host memory.
    pub fn host_zeros(len: usize) -> Buffer {
        Buffer::Host(HostArray::zeroed(len))
    }

    pub fn len(&self) -> usize {
        match self {
            Buffer::Host(values) => values.len(),
            Buffer::Device(array) => array.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the values are in host memory.
    pub fn is_host(&self) -> bool {
        matches!(self, Buffer::Host(_))
    }

    /// The whole array.
    pub fn view(&self) -> View<'_> {
        match self {
            Buffer::Host(values) => View::Host(values),
            Buffer::Device(array) => View::Device(DeviceView { array: &**array, offset: 0, len: array.len() }),
        }
    }

    /// The whole array, to write.
    pub fn view_mut(&mut self) -> ViewMut<'_> {
        match self {
            Buffer::Host(values) => ViewMut::Host(values),
            Buffer::Device(array) => {
                let len = array.len();
                ViewMut::Device(DeviceView { array: &**array, offset: 0, len })
            }
        }
    }

    /// Values `range`.
    pub fn slice(&self, range: Range<usize>) -> View<'_> {
        self.view().slice(range)
    }

    /// Values `range`, to write.
    pub fn slice_mut(&mut self, range: Range<usize>) -> ViewMut<'_> {
        self.view_mut().into_slice(range)
    }

    /// The values on the host: borrowed when they are there, else read back into `scratch`.
    pub fn on_host<'a>(&'a self, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        self.view().on_host(scratch)
    }

    /// Values `range` of a device buffer, to write: the device writes them, so a shared borrow
    /// suffices and disjoint ranges may be handed to several ops at once. `None` for host memory.
    pub fn device_slice_mut(&self, range: Range<usize>) -> Option<ViewMut<'_>> {
        match self {
            Buffer::Host(_) => None,
            Buffer::Device(array) => {
                let whole = DeviceView { array: &**array, offset: 0, len: array.len() };
                Some(ViewMut::Device(whole.slice(range)))
            }
        }
    }

    /// A copy of the values on the host.
    pub fn to_host(&self) -> HostArray<f32> {
        match self {
            Buffer::Host(values) => values.clone(),
            Buffer::Device(array) => {
                let mut values = HostArray::zeroed(array.len());
                array.read(0, &mut values);
                values
            }
        }
    }
}

impl Clone for Buffer {
    /// A copy where the original lives (device to device for a device buffer).
    fn clone(&self) -> Buffer {
        match self {
            Buffer::Host(values) => Buffer::Host(values.clone()),
            Buffer::Device(array) => Buffer::Device(array.duplicate()),
        }
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Buffer::Host(values) => write!(f, "Buffer::Host({} values)", values.len()),
            Buffer::Device(array) => write!(f, "Buffer::Device({} values)", array.len()),
        }
    }
}

/// A range of a device array.
#[derive(Clone, Copy)]
pub struct DeviceView<'a> {
    pub array: &'a dyn DeviceArray,
    pub offset: usize,
    pub len: usize,
}

impl<'a> DeviceView<'a> {
    fn slice(self, range: Range<usize>) -> DeviceView<'a> {
        assert!(range.start <= range.end && range.end <= self.len, "view range {range:?} past {} values", self.len);
        DeviceView { array: self.array, offset: self.offset + range.start, len: range.len() }
    }
}

/// Values an op reads: host memory, or a range of a device array.
#[derive(Clone, Copy)]
pub enum View<'a> {
    Host(&'a [f32]),
    Device(DeviceView<'a>),
}

impl<'a> View<'a> {
    pub fn len(&self) -> usize {
        match self {
            View::Host(values) => values.len(),
            View::Device(view) => view.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn slice(self, range: Range<usize>) -> View<'a> {
        match self {
            View::Host(values) => View::Host(&values[range]),
            View::Device(view) => View::Device(view.slice(range)),
        }
    }

    /// The host values. Panics on device memory: a host engine handed a device buffer is a bug
    /// in the caller (buffers are made by the engine that uses them).
    pub fn host(self) -> &'a [f32] {
        match self {
            View::Host(values) => values,
            View::Device(_) => panic!("a host op was handed device memory"),
        }
    }

    /// The values on the host: borrowed when they are there, else read back into `scratch`.
    pub fn on_host<'s>(self, scratch: &'s mut Vec<f32>) -> &'s [f32]
    where
        'a: 's,
    {
        match self {
            View::Host(values) => values,
            View::Device(view) => {
                scratch.resize(view.len, 0.0);
                view.array.read(view.offset, scratch);
                scratch
            }
        }
    }
}

impl<'a> From<&'a [f32]> for View<'a> {
    fn from(values: &'a [f32]) -> View<'a> {
        View::Host(values)
    }
}

impl<'a> From<&'a Vec<f32>> for View<'a> {
    fn from(values: &'a Vec<f32>) -> View<'a> {
        View::Host(values)
    }
}

/// Values an op writes.
pub enum ViewMut<'a> {
    Host(&'a mut [f32]),
    /// Device memory is written by the device: the view only says where.
    Device(DeviceView<'a>),
}

impl<'a> ViewMut<'a> {
    pub fn len(&self) -> usize {
        match self {
            ViewMut::Host(values) => values.len(),
            ViewMut::Device(view) => view.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same values, for a shorter borrow.
    pub fn reborrow(&mut self) -> ViewMut<'_> {
        match self {
            ViewMut::Host(values) => ViewMut::Host(values),
            ViewMut::Device(view) => ViewMut::Device(*view),
        }
    }

    /// Values `range` of this view.
    pub fn slice_mut(&mut self, range: Range<usize>) -> ViewMut<'_> {
        self.reborrow().into_slice(range)
    }

    pub fn into_slice(self, range: Range<usize>) -> ViewMut<'a> {
        match self {
            ViewMut::Host(values) => ViewMut::Host(&mut values[range]),
            ViewMut::Device(view) => ViewMut::Device(view.slice(range)),
        }
    }

    /// Read access to the same values.
    pub fn as_view(&self) -> View<'_> {
        match self {
            ViewMut::Host(values) => View::Host(values),
            ViewMut::Device(view) => View::Device(*view),
        }
    }

    /// The host values; panics on device memory (see [`View::host`]).
    pub fn host(self) -> &'a mut [f32] {
        match self {
            ViewMut::Host(values) => values,
            ViewMut::Device(_) => panic!("a host op was handed device memory"),
        }
    }
}

impl<'a> From<&'a mut [f32]> for ViewMut<'a> {
    fn from(values: &'a mut [f32]) -> ViewMut<'a> {
        ViewMut::Host(values)
    }
}

impl<'a> From<&'a mut Vec<f32>> for ViewMut<'a> {
    fn from(values: &'a mut Vec<f32>) -> ViewMut<'a> {
        ViewMut::Host(values)
    }
}

//! Coil's GPU backend: the hot ops of a Mamba-2 forward pass as CubeCL kernels, one code base for
//! CUDA (feature `cuda`) and for any GPU wgpu reaches (feature `wgpu`: Vulkan, Metal, DX12).
//!
//! [`open`] turns a [`Device`] choice into a [`Backend`]; it never panics when a device is
//! missing, it says which one and why. A model on it runs on its engine (`Backend::device_engine`):
//! the state, the activations and the small parameters stay in device buffers, weight matrices
//! are uploaded once (in blocks under the device's largest buffer), and a pass brings back its
//! logits and a few values per layer. As a plain [`Backend`] (host slices in and out) each op
//! uploads and reads back. A device failure is an error the model returns, never a result.
//! Everything is f32 with f32 accumulation; `--device` results agree with the CPU within f32
//! rounding.

mod backend;
mod engine;
mod fault;
pub mod kernels;
mod open;

pub use backend::Gpu;
pub use coil_kernels::{Backend, Device};
pub use open::{adapters, cuda_devices, open, open_with_max_buffer, test_backend, Adapter, AdapterKind, DeviceError, MAX_BUFFER_VAR};

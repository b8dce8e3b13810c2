//! Coil's GPU backend: the hot ops of a Mamba-2 forward pass as CubeCL kernels, one code base for
//! CUDA (feature `cuda`) and for any GPU wgpu reaches (feature `wgpu`: Vulkan, Metal, DX12).
//!
//! [`open`] turns a [`Device`] choice into a [`Backend`]; it never panics when a device is
//! missing, it says which one and why. The backend computes on host buffers like the CPU one, so
//! the model code is the same on every device: weight matrices stay resident on the device (one
//! copy per matrix, made on first use, in blocks under the device's largest buffer), activations
//! and the state travel per op. A device failure is an error the model returns, never a result. Everything is
//! f32 with f32 accumulation; `--device` results agree with the CPU within f32 rounding.

mod backend;
mod fault;
pub mod kernels;
mod open;

pub use backend::Gpu;
pub use coil_kernels::{Backend, Device};
pub use open::{adapters, cuda_devices, open, open_with_max_buffer, test_backend, Adapter, AdapterKind, DeviceError, MAX_BUFFER_VAR};

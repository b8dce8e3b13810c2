use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use coil_kernels::{Backend, Cpu, Device};

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no CUDA device {index}: {reason}")]
    NoCuda { index: usize, reason: String },
    #[error("no wgpu adapter {wanted}: {found}")]
    NoAdapter { wanted: String, found: String },
    #[error("this build of coil has no {runtime} support (build with the `{feature}` feature)")]
    NotBuilt { runtime: &'static str, feature: &'static str },
    #[error("could not start {device}: {message}")]
    Init { device: String, message: String },
}

/// A GPU that wgpu reaches, as `coil devices` lists it: `wgpu:INDEX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adapter {
    pub index: usize,
    pub name: String,
    pub kind: AdapterKind,
    /// The graphics API (Vulkan, Metal, DX12).
    pub api: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterKind {
    Discrete,
    Integrated,
    Virtual,
    /// A software rasteriser (Mesa's lavapipe): correct, slower than the CPU backend.
    Software,
    Other,
}

impl Adapter {
    /// Real hardware, which `auto` may pick.
    pub fn is_hardware(&self) -> bool {
        matches!(self.kind, AdapterKind::Discrete | AdapterKind::Integrated | AdapterKind::Virtual)
    }
}

impl fmt::Display for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wgpu:{}  {} ({:?}, {})", self.index, self.name, self.kind, self.api)
    }
}

/// The number of CUDA devices, or why there are none usable (no driver, no NVRTC, no feature).
pub fn cuda_devices() -> Result<usize, String> {
    cuda::probe()
}

/// Opens `device`; see [`Device`] for what `Auto` picks. [`MAX_BUFFER_VAR`], when set, caps
/// the device's buffers as [`open_with_max_buffer`] does.
pub fn open(device: Device) -> Result<Arc<dyn Backend>, DeviceError> {
    open_with_max_buffer(device, max_buffer_bytes(&device.to_string())?)
}

/// [`open`] with every device buffer at most `max_buffer_bytes` (`None`: the device's own
/// limit). Lower than the device's, it makes small models take the paths that split large
/// matrices; higher, it lets through what the device will refuse (to see how that surfaces).
pub fn open_with_max_buffer(device: Device, max_buffer_bytes: Option<u64>) -> Result<Arc<dyn Backend>, DeviceError> {
    match device {
        Device::Cpu => Ok(Arc::new(Cpu)),
        Device::Cuda(index) => cuda::open(index, max_buffer_bytes),
        Device::Wgpu(index) => wgpu_open(index, max_buffer_bytes),
        Device::Auto => {
            if cuda::count() > 0 {
                return cuda::open(0, max_buffer_bytes);
            }
            match adapters().into_iter().find(Adapter::is_hardware) {
                Some(adapter) => wgpu_open(Some(adapter.index), max_buffer_bytes),
                None => Ok(Arc::new(Cpu)),
            }
        }
    }
}

/// The device tests run the GPU kernels on: `COIL_TEST_DEVICE` (default `wgpu`, which on a
/// machine without a GPU is Mesa's lavapipe from `scripts/install-lavapipe.sh`). Panics, naming
/// the device and why, when it cannot be opened or is the CPU: GPU tests never pass by skipping.
#[doc(hidden)]
pub fn test_backend() -> Arc<dyn Backend> {
    static BACKEND: std::sync::OnceLock<Arc<dyn Backend>> = std::sync::OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let wanted = std::env::var("COIL_TEST_DEVICE").unwrap_or_else(|_| "wgpu".into());
            let device: Device = wanted.parse().unwrap_or_else(|e| panic!("COIL_TEST_DEVICE: {e}"));
            let backend = open(device).unwrap_or_else(|e| panic!("opening {device} for the GPU tests: {e}"));
            assert_ne!(backend.name(), "cpu", "COIL_TEST_DEVICE={wanted} opened the CPU backend: the GPU kernels would go untested");
            backend
        })
        .clone()
}

/// The environment variable [`open`] reads the largest device buffer from, in bytes, in place
/// of the device's own limit (see [`open_with_max_buffer`]).
pub const MAX_BUFFER_VAR: &str = "COIL_GPU_MAX_BUFFER";

fn max_buffer_bytes(device: &str) -> Result<Option<u64>, DeviceError> {
    let Some(value) = std::env::var_os(MAX_BUFFER_VAR) else {
        return Ok(None);
    };
    match value.to_str().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(bytes) if bytes >= 4 => Ok(Some(bytes)),
        _ => Err(DeviceError::Init {
            device: device.to_string(),
            message: format!("{MAX_BUFFER_VAR}={value:?} is not a number of bytes (at least 4)"),
        }),
    }
}

/// Runs `start` (a CubeCL client's creation, which panics on a device thread when the device
/// cannot start) and turns a panic into an error.
#[allow(dead_code)]
fn guarded<T>(device: &str, start: impl FnOnce() -> T) -> Result<T, DeviceError> {
    catch_unwind(AssertUnwindSafe(start)).map_err(|panic| DeviceError::Init {
        device: device.to_string(),
        message: panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the runtime panicked".into()),
    })
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use cubecl::cuda::{CudaDevice, CudaRuntime};
    use cubecl::Runtime;

    /// CUDA devices present: 0 without a loadable libcuda (0.10's runtime panics on that, so
    /// ask cudarc first).
    pub fn count() -> usize {
        probe().unwrap_or(0)
    }

    pub fn probe() -> Result<usize, String> {
        // SAFETY: only tries to load the shared libraries.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("libcuda is not installed (no NVIDIA driver)".into());
        }
        let count = cudarc::driver::CudaContext::device_count().map_err(driver_failure)?;
        if count > 0 && !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err("libnvrtc (the CUDA runtime compiler, which builds the kernels) is not installed".into());
        }
        Ok(count.max(0) as usize)
    }

    /// Why the driver could not count devices, with the usual cause of a stub library: a CUDA
    /// toolkit's `lib/stubs` folder on `LD_LIBRARY_PATH` (some images set it so) shadows the
    /// driver's `libcuda.so.1`, as cudarc asks for `libcuda.so` first.
    pub(super) fn driver_failure(error: cudarc::driver::DriverError) -> String {
        if error.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_STUB_LIBRARY {
            return "the libcuda loaded is the CUDA toolkit's stub, not the driver: take the toolkit's `stubs` \
                    folder out of LD_LIBRARY_PATH"
                .into();
        }
        // The code's name, not `DriverError`'s Debug, which asks the driver for a description.
        format!("the CUDA driver failed: {:?}", error.0)
    }

    pub fn open(index: usize, max_buffer: Option<u64>) -> Result<Arc<dyn Backend>, DeviceError> {
        let count = probe().map_err(|reason| DeviceError::NoCuda { index, reason })?;
        if index >= count {
            return Err(DeviceError::NoCuda { index, reason: format!("{count} CUDA device(s) present") });
        }
        let device = format!("cuda:{index}");
        let client = guarded(&device, || CudaRuntime::client(&CudaDevice { index }))?;
        Ok(Arc::new(crate::Gpu::new(client, "cuda", device, true, max_buffer)))
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::*;

    pub fn count() -> usize {
        0
    }

    pub fn probe() -> Result<usize, String> {
        Err("this build has no CUDA support (the `cuda` feature)".into())
    }

    pub fn open(_index: usize, _max_buffer: Option<u64>) -> Result<Arc<dyn Backend>, DeviceError> {
        Err(DeviceError::NotBuilt { runtime: "CUDA", feature: "cuda" })
    }
}

/// The adapters wgpu finds on the graphics API CubeCL uses (Vulkan on Linux and Windows, Metal
/// on macOS), in wgpu's order; empty without the `wgpu` feature.
pub fn adapters() -> Vec<Adapter> {
    #[cfg(feature = "wgpu")]
    {
        wgpu_backend::adapters().into_iter().map(|(adapter, _)| adapter).collect()
    }
    #[cfg(not(feature = "wgpu"))]
    {
        Vec::new()
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_open(index: Option<usize>, max_buffer: Option<u64>) -> Result<Arc<dyn Backend>, DeviceError> {
    wgpu_backend::open(index, max_buffer)
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_open(_index: Option<usize>, _max_buffer: Option<u64>) -> Result<Arc<dyn Backend>, DeviceError> {
    Err(DeviceError::NotBuilt { runtime: "wgpu", feature: "wgpu" })
}

#[cfg(feature = "wgpu")]
mod wgpu_backend {
    use super::*;
    use cubecl::wgpu::{AutoGraphicsApi, GraphicsApi, WgpuDevice, WgpuRuntime};
    use cubecl::Runtime;

    /// Each adapter with the device CubeCL knows it by (kind, then index among that kind).
    pub fn adapters() -> Vec<(Adapter, Option<WgpuDevice>)> {
        let backend = AutoGraphicsApi::backend();
        let listed = catch_unwind(|| {
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
                backends: backend.into(),
                ..wgpu::InstanceDescriptor::new_without_display_handle()
            });
            cubecl::future::block_on(instance.enumerate_adapters(backend.into()))
                .into_iter()
                .map(|adapter| adapter.get_info())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
        let mut seen = [0usize; 4];
        listed
            .into_iter()
            .enumerate()
            .map(|(index, info)| {
                let (kind, device) = match info.device_type {
                    wgpu::DeviceType::DiscreteGpu => (AdapterKind::Discrete, Some(WgpuDevice::DiscreteGpu(seen[0]))),
                    wgpu::DeviceType::IntegratedGpu => (AdapterKind::Integrated, Some(WgpuDevice::IntegratedGpu(seen[1]))),
                    wgpu::DeviceType::VirtualGpu => (AdapterKind::Virtual, Some(WgpuDevice::VirtualGpu(seen[2]))),
                    // CubeCL opens only the first software adapter.
                    wgpu::DeviceType::Cpu => (AdapterKind::Software, (seen[3] == 0).then_some(WgpuDevice::Cpu)),
                    wgpu::DeviceType::Other => (AdapterKind::Other, None),
                };
                let slot = match kind {
                    AdapterKind::Discrete => 0,
                    AdapterKind::Integrated => 1,
                    AdapterKind::Virtual => 2,
                    _ => 3,
                };
                seen[slot] += 1;
                (Adapter { index, name: info.name, kind, api: format!("{:?}", info.backend) }, device)
            })
            .collect()
    }

    pub fn open(index: Option<usize>, max_buffer: Option<u64>) -> Result<Arc<dyn Backend>, DeviceError> {
        let listed = adapters();
        let found = || {
            if listed.is_empty() {
                format!("wgpu finds no {:?} adapter (no GPU driver, and no lavapipe: scripts/install-lavapipe.sh)", AutoGraphicsApi::backend())
            } else {
                let names: Vec<String> = listed.iter().map(|(a, _)| a.to_string()).collect();
                format!("adapters present: {}", names.join("; "))
            }
        };
        let wanted = index.map_or("wgpu".to_string(), |i| format!("wgpu:{i}"));
        // The default: the first hardware adapter, else the first of any kind.
        let index = index.or_else(|| listed.iter().position(|(a, _)| a.is_hardware())).unwrap_or(0);
        let Some((adapter, Some(device))) = listed.get(index) else {
            return Err(DeviceError::NoAdapter { wanted, found: found() });
        };
        let client = guarded(&adapter.to_string(), || WgpuRuntime::client(device))?;
        // Unrolled scans are right for GPUs; lavapipe's compiler takes seconds over them.
        Ok(Arc::new(crate::Gpu::new(client, "wgpu", adapter.to_string(), adapter.is_hardware(), max_buffer)))
    }
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    use cudarc::driver::{sys::CUresult, DriverError};

    #[test]
    fn a_stub_libcuda_is_named_as_such() {
        let stub = super::cuda::driver_failure(DriverError(CUresult::CUDA_ERROR_STUB_LIBRARY));
        assert!(stub.contains("stub") && stub.contains("LD_LIBRARY_PATH"), "{stub}");
        let other = super::cuda::driver_failure(DriverError(CUresult::CUDA_ERROR_NO_DEVICE));
        assert!(other.contains("CUDA_ERROR_NO_DEVICE") && !other.contains("stub"), "{other}");
    }
}

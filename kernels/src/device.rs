use std::fmt;
use std::str::FromStr;

/// Where a model runs: `auto`, `cpu`, `cuda[:N]` or `wgpu[:N]` on the command line.
///
/// `Auto` takes the first CUDA device if there is one, else a hardware GPU that wgpu reaches,
/// else the CPU; it never picks a software adapter (Mesa's lavapipe), which has to be asked for
/// as `wgpu`. Opening a device is `coil_gpu::open`, or the facade's `Model` loaders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    /// CUDA device N (in the driver's order).
    Cuda(usize),
    /// Adapter N of wgpu's list (`coil devices` prints it); `None`: the default adapter.
    Wgpu(Option<usize>),
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Device, String> {
        let (kind, index) = match s.split_once(':') {
            Some((kind, index)) => {
                let n = index.parse::<usize>().map_err(|_| format!("device index {index:?} in {s:?} is not a number"))?;
                (kind, Some(n))
            }
            None => (s, None),
        };
        match (kind, index) {
            ("auto", None) => Ok(Device::Auto),
            ("cpu", None) => Ok(Device::Cpu),
            ("cuda", n) => Ok(Device::Cuda(n.unwrap_or(0))),
            ("wgpu", n) => Ok(Device::Wgpu(n)),
            ("auto" | "cpu", Some(_)) => Err(format!("device {kind:?} takes no index")),
            _ => Err(format!("unknown device {s:?}: expected auto, cpu, cuda[:N] or wgpu[:N]")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => write!(f, "auto"),
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Wgpu(None) => write!(f, "wgpu"),
            Device::Wgpu(Some(n)) => write!(f, "wgpu:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Device;

    #[test]
    fn parses_and_prints() {
        for (text, device) in [
            ("auto", Device::Auto),
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
            ("wgpu", Device::Wgpu(None)),
            ("wgpu:1", Device::Wgpu(Some(1))),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(device));
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        assert_eq!("wgpu:1".parse::<Device>().unwrap().to_string(), "wgpu:1");
        for bad in ["", "gpu", "cuda:x", "cpu:0", "wgpu:-1", "CUDA"] {
            assert!(bad.parse::<Device>().is_err(), "{bad:?} parsed");
        }
    }
}

//! Device selection: the one place that knows whether this build has CUDA.
//!
//! The configuration names a device as `"auto"`, `"cpu"`, `"cuda"` (device 0) or `"cuda:N"`.
//! Parsing is the same in every build, so a config file is valid or invalid regardless of
//! features; only *opening* a CUDA device depends on the `cuda` feature. Asking for CUDA in a
//! CPU build is a clear startup error, not a compile error.

use candle_core::Device;

use crate::error::{EngineError, Result};

/// A parsed `engine.device` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeviceRequest {
    /// CUDA device 0 when the build has CUDA and the device opens, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl DeviceRequest {
    /// Parses `"auto" | "cpu" | "cuda" | "cuda:N"` (ASCII case-insensitive, surrounding
    /// whitespace ignored).
    pub(crate) fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    EngineError::InvalidInput(format!(
                        "engine.device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", \
                         not {s:?}"
                    ))
                }),
        }
    }
}

/// Opens the device named by `spec` (see [`DeviceRequest::parse`]).
pub(crate) fn select(spec: &str) -> Result<Device> {
    match DeviceRequest::parse(spec)? {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Cuda(ordinal) => open_cuda(ordinal),
        DeviceRequest::Auto => Ok(auto()),
    }
}

/// A short name for logs: `cpu` or `cuda:N`.
pub(crate) fn label(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_owned(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        EngineError::InvalidInput(format!(
            "cannot open CUDA device {ordinal}: {}",
            first_line(&e)
        ))
    })
}

/// candle's errors carry a backtrace in their text when `RUST_BACKTRACE` is set: a reason for
/// a person keeps its first line.
#[cfg(feature = "cuda")]
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device> {
    Err(EngineError::InvalidInput(
        "this build has no CUDA support; rebuild with --features cuda".to_owned(),
    ))
}

#[cfg(feature = "cuda")]
fn auto() -> Device {
    match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(error = %first_line(&e), "no usable CUDA device; using the CPU");
            Device::Cpu
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn auto() -> Device {
    Device::Cpu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(DeviceRequest::parse("auto").unwrap(), DeviceRequest::Auto);
        assert_eq!(DeviceRequest::parse(" CPU ").unwrap(), DeviceRequest::Cpu);
        assert_eq!(
            DeviceRequest::parse("cuda").unwrap(),
            DeviceRequest::Cuda(0)
        );
        assert_eq!(
            DeviceRequest::parse("cuda:3").unwrap(),
            DeviceRequest::Cuda(3)
        );
        for bad in ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "metal"] {
            let err = DeviceRequest::parse(bad).unwrap_err().to_string();
            assert!(err.contains("engine.device"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn cpu_and_auto_open() {
        assert!(select("cpu").unwrap().is_cpu());
        // `auto` always yields a device: CUDA 0 when built and present, else the CPU.
        let _ = select("auto").unwrap();
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_in_a_cpu_build_is_a_clear_error() {
        let err = select("cuda:0").unwrap_err().to_string();
        assert!(err.contains("rebuild with --features cuda"), "{err}");
    }
}

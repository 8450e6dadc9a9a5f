//! Backend selection by name: the one place that knows which backends are compiled in.
use burn::tensor::Device;

/// Backends compiled into this build.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

/// The device of backend `name` (`flex`, `ndarray`, `wgpu`, `cuda`), or a message saying which
/// cargo feature to build with.
pub fn device(name: &str) -> Result<Device, String> {
    let missing = |feature: &str| {
        Err(format!(
            "backend `{name}` is not compiled into this build (compiled: {}); rebuild with `cargo build --release -p deq-train --features {feature}`",
            compiled_backends().join(", ")
        ))
    };
    match name {
        "flex" => {
            #[cfg(feature = "flex")]
            return Ok(Device::flex());
            #[allow(unreachable_code)]
            missing("flex")
        }
        "ndarray" => {
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            return Ok(Device::ndarray());
            #[allow(unreachable_code)]
            missing("ndarray")
        }
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            return Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
            #[allow(unreachable_code)]
            missing("wgpu")
        }
        "cuda" => {
            #[cfg(feature = "cuda")]
            return Ok(Device::cuda(0));
            #[allow(unreachable_code)]
            missing("cuda")
        }
        other => Err(format!(
            "unknown backend `{other}` (expected flex, ndarray, wgpu or cuda; compiled: {})",
            compiled_backends().join(", ")
        )),
    }
}

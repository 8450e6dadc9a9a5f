//! Devices by backend name: the one place that knows which backends are compiled in
//! (`flex`, `ndarray`, `wgpu`, `cuda` cargo features). Everything else takes a [`Device`].
//!
//! With several backends compiled in, Burn's `Device::default()` prefers a GPU backend; code
//! that means "the CPU reference" uses [`cpu`] instead.
use burn::tensor::Device;

/// The CPU reference device: flex if compiled in, else ndarray, else Burn's default.
pub fn cpu() -> Device {
    #[cfg(feature = "flex")]
    return Device::flex();
    #[cfg(all(feature = "ndarray", not(feature = "flex")))]
    #[allow(deprecated)]
    return Device::ndarray();
    #[allow(unreachable_code)]
    Device::default()
}

/// Whether `device` is flex's (an autodiff device answers for the device it wraps): the
/// backend of the project's fused host loops.
pub(crate) fn is_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    return *device == Device::flex();
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// Whether `device` runs its kernels on the CPU from host memory (flex, ndarray; an autodiff
/// device answers for the device it wraps). There the solvers copy rows run by run and
/// evaluate f on part of the batch; on a GPU (or any cubecl runtime) those would only be more
/// kernel launches.
pub fn is_host_memory(device: &Device) -> bool {
    // Device equality is hardware identity: it ignores the autodiff association.
    #[cfg(feature = "flex")]
    if *device == Device::flex() {
        return true;
    }
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    if *device == Device::ndarray() {
        return true;
    }
    let _ = device;
    false
}

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
            "backend `{name}` is not compiled into this build (compiled: {}); rebuild with the cargo feature `{feature}` (e.g. `cargo build --release -p deq-train --features {feature}`)",
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
            {
                wgpu_adapter()?;
                return Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
            }
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

/// `count` devices of backend `name` for data-parallel training: GPUs 0..count for `wgpu`
/// (discrete GPUs) and `cuda`; the one CPU device `count` times for `flex` and `ndarray` (their
/// replicas then share the CPU's threads, which exercises the mechanism but gains no speed).
pub fn devices(name: &str, count: usize) -> Result<Vec<Device>, String> {
    if count == 0 {
        return Err("the number of devices must be at least 1".into());
    }
    if count == 1 {
        return Ok(vec![device(name)?]);
    }
    match name {
        "wgpu" => {
            device(name)?;
            #[cfg(feature = "wgpu")]
            return Ok((0..count)
                .map(|i| Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(i)))
                .collect());
            #[allow(unreachable_code)]
            Err(String::new())
        }
        "cuda" => {
            device(name)?;
            #[cfg(feature = "cuda")]
            return Ok((0..count).map(Device::cuda).collect());
            #[allow(unreachable_code)]
            Err(String::new())
        }
        other => {
            let one = device(other)?;
            Ok(vec![one; count])
        }
    }
}

/// What backend `name` runs on, in words: the WGPU adapter (name, graphics API, device type,
/// driver), or the CPU backend and its thread count.
pub fn describe(name: &str) -> Result<String, String> {
    match name {
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            return wgpu_adapter();
            #[allow(unreachable_code)]
            device(name).map(|_| String::new())
        }
        "cuda" => device(name).map(|_| "CUDA device 0".to_string()),
        other => device(other).map(|_| {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let threads = std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|t| t.parse::<usize>().ok())
                .filter(|&t| t > 0)
                .unwrap_or(threads);
            format!("{other} on the CPU, {threads} thread(s)")
        }),
    }
}

/// The adapter WGPU's default device will use: the first GPU, or else the first adapter of
/// any kind (a software rasteriser such as lavapipe), as Burn picks it. An error says how to
/// get one when there is none.
#[cfg(feature = "wgpu")]
fn wgpu_adapter() -> Result<String, String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapters: Vec<wgpu::AdapterInfo> =
        futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
            .iter()
            .map(wgpu::Adapter::get_info)
            .collect();
    let chosen = adapters
        .iter()
        .find(|a| a.device_type != wgpu::DeviceType::Cpu)
        .or_else(|| adapters.first());
    match chosen {
        Some(info) => Ok(format!(
            "{} ({:?}, {:?}, driver {} {})",
            info.name, info.backend, info.device_type, info.driver, info.driver_info
        )
        .replace(" )", ")")),
        None => Err(
            "backend `wgpu`: no graphics adapter found (no GPU driver and no software \
             Vulkan). Install a Vulkan driver (e.g. `apt-get install mesa-vulkan-drivers \
             libvulkan1` for the software one) or use `--backend flex`"
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "flex", feature = "ndarray"))]
    #[test]
    fn the_cpu_device_keeps_host_memory_with_or_without_autodiff() {
        assert!(is_host_memory(&cpu()));
        assert!(is_host_memory(&cpu().autodiff()));
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn a_wgpu_device_does_not_use_host_memory() {
        if let Ok(device) = device("wgpu") {
            assert!(!is_host_memory(&device));
            assert!(!is_host_memory(&device.autodiff()));
        }
    }
}

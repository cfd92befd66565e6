//! Finding devices: the adapters wgpu sees (listed without creating a device, since
//! CubeCL panics when asked for one that does not exist), and the backends this build
//! has.

/// An adapter wgpu found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adapter {
    pub name: String,
    /// `discrete`, `integrated`, `virtual`, `cpu` (software, e.g. lavapipe) or `other`.
    pub kind: &'static str,
    /// The graphics API: `Vulkan`, `Metal`, `Dx12`.
    pub api: String,
    pub driver: String,
}

impl Adapter {
    /// `llvmpipe (LLVM 15.0.6, 256 bits) (cpu, Vulkan, Mesa 22.3.6)`.
    pub fn describe(&self) -> String {
        let driver = if self.driver.is_empty() {
            String::new()
        } else {
            format!(", {}", self.driver)
        };
        format!("{} ({}, {}{driver})", self.name, self.kind, self.api)
    }
}

/// The graphics API CubeCL's wgpu runtime uses on this platform.
fn api() -> wgpu::Backends {
    if cfg!(target_os = "macos") {
        wgpu::Backends::METAL
    } else {
        wgpu::Backends::VULKAN
    }
}

/// What to install when no adapter is found.
pub const HOW_TO_GET_ONE: &str = "install the GPU's Vulkan driver; for a software one (lavapipe), on Debian or Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`";

/// The adapters of the graphics API CubeCL uses here, in the order wgpu lists them.
pub fn adapters() -> Vec<Adapter> {
    let probe = std::panic::catch_unwind(|| {
        let desc = wgpu::InstanceDescriptor {
            backends: api(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        };
        let instance = wgpu::Instance::new(desc);
        cubecl::future::block_on(instance.enumerate_adapters(api()))
    });
    let Ok(found) = probe else {
        return Vec::new();
    };
    found
        .iter()
        .map(|a| {
            let info = a.get_info();
            Adapter {
                name: info.name.clone(),
                kind: match info.device_type {
                    wgpu::DeviceType::DiscreteGpu => "discrete",
                    wgpu::DeviceType::IntegratedGpu => "integrated",
                    wgpu::DeviceType::VirtualGpu => "virtual",
                    wgpu::DeviceType::Cpu => "cpu",
                    wgpu::DeviceType::Other => "other",
                },
                api: format!("{:?}", info.backend),
                driver: [info.driver.as_str(), info.driver_info.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
            }
        })
        .collect()
}

/// The adapter to use: a discrete GPU first, then an integrated, a virtual and a software
/// one; with CubeCL's device for it (its index counts adapters of the same kind).
pub fn choose(found: &[Adapter]) -> Option<(Adapter, cubecl::wgpu::WgpuDevice)> {
    use cubecl::wgpu::WgpuDevice;
    for kind in ["discrete", "integrated", "virtual", "cpu"] {
        if let Some(a) = found.iter().find(|a| a.kind == kind) {
            let device = match kind {
                "discrete" => WgpuDevice::DiscreteGpu(0),
                "integrated" => WgpuDevice::IntegratedGpu(0),
                "virtual" => WgpuDevice::VirtualGpu(0),
                _ => WgpuDevice::Cpu,
            };
            return Some((a.clone(), device));
        }
    }
    found
        .first()
        .map(|a| (a.clone(), WgpuDevice::DefaultDevice))
}

/// Backends compiled into this build, with how to get the others.
pub fn built() -> Vec<(&'static str, bool, &'static str)> {
    vec![
        ("wgpu", true, ""),
        (
            "cuda",
            cfg!(feature = "cuda"),
            "build with `--features cuda` (loads the driver and NVRTC at run time)",
        ),
        (
            "hip",
            cfg!(feature = "hip"),
            "build with `--features hip` (links ROCm's libraries)",
        ),
    ]
}

/// The environment variable that caps the device memory nabla uses (bytes, or a number
/// with `K`, `M`, `G` or `T`, powers of 1024): for sharing a GPU, and on devices that
/// cannot report their free memory (wgpu), so that a step too large is refused by name
/// before it is allocated.
pub const MEMORY_LIMIT_VAR: &str = "NABLA_GPU_MEMORY";

/// The memory limit [`MEMORY_LIMIT_VAR`] sets, if any.
pub fn memory_limit() -> Result<Option<u64>, String> {
    match std::env::var(MEMORY_LIMIT_VAR) {
        Ok(v) => parse_size(&v).map(Some).ok_or_else(|| {
            format!(
                "{MEMORY_LIMIT_VAR}={v} is not a size: write bytes, or a number with K, M, G or T (powers of 1024), like 8G"
            )
        }),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("{MEMORY_LIMIT_VAR} is not valid text"))
        }
    }
}

/// `4096`, `512M`, `1.5GiB`, `8 G` → bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return None,
    };
    let v: f64 = num.parse().ok()?;
    let bytes = v * scale as f64;
    (v.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size(" 8 g "), Some(8 << 30));
        assert_eq!(parse_size("2kb"), Some(2048));
        for bad in ["", "G", "-1G", "1.2.3", "12 apples", "0", "nanG", "1e30T"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}

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

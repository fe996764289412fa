//! Which GPU adapter the runtime found, and how to get a faster one when the
//! demo runs on the GL fallback or on a CPU adapter.
//!
//! The runtime takes the best adapter among those it is allowed (a GPU before
//! the CPU, Vulkan before GL), so landing on GL or the CPU means nothing
//! better was found, unless the configuration or the environment narrowed the
//! choice; the advice says which.

use serde::Serialize;
use sessionbus::config::Config;
use sessionbus::pool::PoolInfo;

/// The adapter block of every report.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterReport {
    pub name: String,
    /// "vulkan", "gl", "metal", "dx12".
    pub backend: String,
    /// "discrete-gpu", "integrated-gpu", "cpu", ...
    pub device_type: String,
    /// How to get a faster adapter than this one; null on a GPU through its
    /// own driver, where there is nothing faster to get.
    pub faster: Option<String>,
}

impl AdapterReport {
    pub fn new(info: &PoolInfo, config: &Config) -> AdapterReport {
        AdapterReport {
            name: info.adapter.clone(),
            backend: info.backend.clone(),
            device_type: info.device_type.clone(),
            faster: faster(info, config),
        }
    }

    /// `name (backend, device type)`.
    pub fn found(&self) -> String {
        format!("{} ({}, {})", self.name, self.backend, self.device_type)
    }
}

fn faster(info: &PoolInfo, config: &Config) -> Option<String> {
    let on_gl = info.backend == "gl";
    let on_cpu = info.device_type == "cpu";
    if !on_gl && !on_cpu {
        return None;
    }
    let mut advice = Vec::new();
    if on_gl {
        if let Some(setting) = backend_narrowed_by(config) {
            advice.push(format!(
                "{setting} keeps the runtime off Vulkan: without it the best adapter wins (Vulkan before GL)"
            ));
        }
        advice.push(
            "on GL wgpu counts no buffer memory and runs slower: install a Vulkan driver \
             (your GPU's, or mesa-vulkan-drivers for lavapipe on a host without a GPU)"
                .to_string(),
        );
    }
    if on_cpu {
        if let Some(setting) = adapter_narrowed_by(config) {
            advice.push(format!(
                "{setting} picks this adapter: without it a GPU, where there is one, wins"
            ));
        }
        advice.push(
            "a CPU adapter renders in software: on a host with a GPU, install its Vulkan driver \
             (the vendor's, or mesa-vulkan-drivers for AMD and Intel)"
                .to_string(),
        );
    }
    advice.push(
        "choose with [gpu] backend and [gpu] adapter in the configuration \
         (or WGPU_BACKEND and WGPU_ADAPTER_NAME)"
            .to_string(),
    );
    Some(advice.join("; "))
}

/// The setting that limited the backends the runtime could choose from, if one did.
fn backend_narrowed_by(config: &Config) -> Option<String> {
    if config.gpu.backend != Default::default() {
        let backend = format!("{:?}", config.gpu.backend).to_lowercase();
        return Some(format!("[gpu] backend = \"{backend}\""));
    }
    let backends = std::env::var("WGPU_BACKEND").ok()?;
    Some(format!("WGPU_BACKEND={backends}"))
}

/// The setting that limited the adapters by name, if one did.
fn adapter_narrowed_by(config: &Config) -> Option<String> {
    if let Some(name) = &config.gpu.adapter {
        return Some(format!("[gpu] adapter = \"{name}\""));
    }
    let name = std::env::var("WGPU_ADAPTER_NAME").ok()?;
    Some(format!("WGPU_ADAPTER_NAME={name}"))
}

//! The `[gpu]` section of the configuration: which device to open and how the
//! worker batches its work.

use serde::{Deserialize, Serialize};

/// Which wgpu backend(s) the pool may open a device on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// `WGPU_BACKEND` if it is set (same syntax as wgpu: `vulkan,gl`), else
    /// Vulkan, Metal, DX12 (and GL with the `gl` feature), best adapter wins.
    #[default]
    Auto,
    /// Vulkan only (Linux, Windows, Android; lavapipe for CPU-only hosts).
    Vulkan,
    /// OpenGL / GLES only (EGL on Linux); needs the `gl` cargo feature.
    /// Note: wgpu does not count buffer memory on GL, so
    /// `GpuCounters::buffer_memory` stays 0 there.
    Gl,
    /// Metal only (macOS, iOS).
    Metal,
    /// Direct3D 12 only (Windows).
    Dx12,
}

impl BackendChoice {
    /// The wgpu backend set this choice stands for, reading `WGPU_BACKEND` for `Auto`.
    #[cfg(feature = "wgpu")]
    pub(crate) fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Auto => wgpu::Backends::from_env().unwrap_or(
                wgpu::Backends::VULKAN
                    | wgpu::Backends::METAL
                    | wgpu::Backends::DX12
                    | wgpu::Backends::GL,
            ),
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Gl => wgpu::Backends::GL,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
        }
    }
}

/// Environment variable consulted when [`GpuConfig::adapter`] is not set, so an
/// operator can pin a device without editing the file (same name wgpu's own tools use).
#[cfg(feature = "wgpu")]
pub(crate) const ADAPTER_ENV: &str = "WGPU_ADAPTER_NAME";

/// How the GPU pool opens its device and paces its work.
///
/// Defaults: `backend = "auto"`, no adapter filter, `batch_max = 256`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Which backend(s) to try. Exists because hosts differ (a Linux server may
    /// only have Mesa's software Vulkan) and because forcing one backend is the
    /// quickest way to rule a driver in or out.
    pub backend: BackendChoice,
    /// Case-insensitive substring of the adapter name that the chosen adapter
    /// must contain (e.g. `"llvmpipe"`, `"nvidia"`). Exists for hosts with
    /// several GPUs. When unset, `WGPU_ADAPTER_NAME` is honoured instead.
    pub adapter: Option<String>,
    /// Most commands the worker takes off its queue per batch before it polls
    /// the device once. Exists because a device poll is the expensive part of a
    /// release: batching lets a burst of session ends share one poll, while the
    /// cap keeps the first release in a burst from waiting on an endless queue.
    pub batch_max: usize,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            backend: BackendChoice::Auto,
            adapter: None,
            batch_max: 256,
        }
    }
}

/// A `[gpu]` setting that cannot work; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GpuConfigError {
    /// `batch_max` is 0: the worker could never take a command.
    #[error("gpu.batch_max: must be at least 1 (256 is a good default)")]
    BatchMaxZero,
    /// `adapter` is set to an empty (or blank) string, which would match every adapter.
    #[error("gpu.adapter: must not be empty; remove the setting to accept any adapter")]
    EmptyAdapter,
    /// `backend = "gl"` in a build without the `gl` feature.
    #[error(
        "gpu.backend: \"gl\" needs sessionbus built with its `gl` feature; use \"vulkan\" \
         (Mesa's lavapipe on CPU-only hosts: apt-get install mesa-vulkan-drivers) or \"auto\""
    )]
    GlNotBuilt,
}

impl GpuConfigError {
    /// The offending field's path.
    pub fn field(&self) -> &'static str {
        match self {
            GpuConfigError::BatchMaxZero => "gpu.batch_max",
            GpuConfigError::EmptyAdapter => "gpu.adapter",
            GpuConfigError::GlNotBuilt => "gpu.backend",
        }
    }
}

impl GpuConfig {
    /// Checks the settings before anything is opened.
    pub fn validate(&self) -> Result<(), GpuConfigError> {
        if self.batch_max == 0 {
            return Err(GpuConfigError::BatchMaxZero);
        }
        if self.backend == BackendChoice::Gl && !cfg!(feature = "gl") {
            return Err(GpuConfigError::GlNotBuilt);
        }
        if self
            .adapter
            .as_deref()
            .is_some_and(|name| name.trim().is_empty())
        {
            return Err(GpuConfigError::EmptyAdapter);
        }
        Ok(())
    }

    /// The adapter-name filter in effect: the setting, else `WGPU_ADAPTER_NAME`
    /// (ignored when blank), lowercased for a case-insensitive match.
    #[cfg(feature = "wgpu")]
    pub(crate) fn adapter_filter(&self) -> Option<String> {
        let raw = match &self.adapter {
            Some(name) => Some(name.clone()),
            None => std::env::var(ADAPTER_ENV).ok(),
        };
        raw.map(|name| name.trim().to_lowercase())
            .filter(|name| !name.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let config = GpuConfig::default();
        assert_eq!(config.backend, BackendChoice::Auto);
        assert_eq!(config.adapter, None);
        assert_eq!(config.batch_max, 256);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn parses_from_toml_with_missing_fields_defaulted() {
        let config: GpuConfig =
            toml::from_str("backend = \"vulkan\"\nadapter = \"llvmpipe\"").unwrap();
        assert_eq!(config.backend, BackendChoice::Vulkan);
        assert_eq!(config.adapter.as_deref(), Some("llvmpipe"));
        assert_eq!(config.batch_max, 256);
    }

    #[test]
    fn unknown_fields_and_backends_are_refused() {
        assert!(toml::from_str::<GpuConfig>("batch_size = 3").is_err());
        assert!(toml::from_str::<GpuConfig>("backend = \"opengl\"").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let zero = GpuConfig {
            batch_max: 0,
            ..GpuConfig::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .starts_with("gpu.batch_max: must be at least 1")
        );
        let blank = GpuConfig {
            adapter: Some("  ".into()),
            ..GpuConfig::default()
        };
        assert!(
            blank
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("gpu.adapter:")
        );
    }

    #[test]
    fn adapter_setting_is_matched_case_insensitively() {
        let config = GpuConfig {
            adapter: Some(" LLVMpipe ".into()),
            ..GpuConfig::default()
        };
        assert_eq!(config.adapter_filter().as_deref(), Some("llvmpipe"));
    }
}

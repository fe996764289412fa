//! Without an adapter, or with a bad configuration, the runtime refuses to
//! start and says why.

use sessionbus::config::BackendChoice;
use sessionbus::config::Config;
use sessionbus::{Runtime, StartError};

#[tokio::test]
async fn a_backend_with_no_adapter_names_what_was_tried_and_how_to_fix_it() {
    let mut config = Config::default();
    // Linux has no Metal: nothing can be found.
    config.gpu.backend = BackendChoice::Metal;
    let err = Runtime::start(config).await.unwrap_err();
    assert!(matches!(err, StartError::Gpu(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains("metal"), "names the backend tried: {text}");
    assert!(
        text.contains("mesa-vulkan-drivers"),
        "says how to install a software driver: {text}"
    );
}

#[tokio::test]
async fn an_adapter_name_that_matches_nothing_is_refused() {
    let mut config = Config::default();
    config.gpu.adapter = Some("no-such-gpu-9000".into());
    let err = Runtime::start(config).await.unwrap_err();
    assert!(err.to_string().contains("no-such-gpu-9000"), "{err}");
}

#[tokio::test]
async fn invalid_configuration_is_refused_before_anything_starts() {
    let mut config = Config::default();
    config.release.tiers[0].rate = 0;
    let err = Runtime::start(config).await.unwrap_err();
    assert!(err.to_string().contains("release.tiers[0].rate"), "{err}");

    let err = sessionbus::config::Config::from_toml("[gpu]\nbatch_max = 0\n").unwrap_err();
    assert!(err.to_string().contains("gpu.batch_max"), "{err}");
    let err = sessionbus::config::Config::from_toml("this is = = not toml").unwrap_err();
    assert!(
        matches!(err, sessionbus::config::ConfigError::Parse { .. }),
        "{err}"
    );
}

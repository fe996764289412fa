//! Invariant 7: dependencies point one way. The engine crate reaches the GPU
//! only through its `GpuPool` trait, so its manifest names neither wgpu nor redis.

#[test]
fn the_engine_manifest_has_no_gpu_or_redis_dependency() {
    let manifest: toml::Table = include_str!("../actors/Cargo.toml")
        .parse()
        .expect("actors/Cargo.toml parses");
    for section in ["dependencies", "build-dependencies"] {
        let Some(deps) = manifest.get(section).and_then(|d| d.as_table()) else {
            continue;
        };
        for name in deps.keys() {
            assert!(
                !name.starts_with("wgpu") && !name.starts_with("redis"),
                "the engine depends on {name} in [{section}]"
            );
        }
    }
}

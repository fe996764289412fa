//! Every pool the repository ships keeps the one `GpuPool` contract
//! (`sessionbus_testkit::pool_contract`): the in-memory test double (with and
//! without a size alignment) and the wgpu pool on the real adapter (Mesa's
//! software Vulkan driver where there is no GPU).

use sessionbus::config::GpuConfig;
use sessionbus::pool::WgpuPool;
use sessionbus::testing::InMemoryPool;
use sessionbus_testkit::pool_contract_tests;

const GIB: u64 = 1 << 30;

fn wgpu_pool() -> WgpuPool {
    WgpuPool::start(&GpuConfig::default())
        .expect("a wgpu adapter (install mesa-vulkan-drivers where there is no GPU)")
}

pool_contract_tests!(in_memory, InMemoryPool::new(GIB, GIB));
pool_contract_tests!(
    in_memory_aligned,
    InMemoryPool::new(GIB, GIB).with_size_alignment(4)
);
pool_contract_tests!(wgpu, wgpu_pool());

//! wgpu pool (to be written).

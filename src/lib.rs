//! sessionbus (work in progress).
pub mod gpu;

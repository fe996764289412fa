//! sessionbus engine (work in progress).
pub mod gpu;
pub mod ids;

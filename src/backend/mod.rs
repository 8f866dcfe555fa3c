//! Backends: where the ops of a forward pass run. `cpu` is the readable reference every GPU
//! kernel is checked against; `cuda` runs on NVIDIA GPUs.

pub mod cpu;
pub mod cuda;

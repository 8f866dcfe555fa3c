//! The CPU backend: the reference forward pass.

pub mod ops;

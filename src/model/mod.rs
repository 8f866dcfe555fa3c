//! Model files and families: GGUF and safetensors readers, the config every family maps to,
//! and the forward pass.

pub mod gguf;

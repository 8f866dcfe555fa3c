//! CUDA backend (placeholder; being written).

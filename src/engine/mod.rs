//! Engine (placeholder; being written).

//! Tokenizer (placeholder; being written).

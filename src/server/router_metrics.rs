//! The gauges that load- and prefix-aware routers read from vLLM-compatible servers, under
//! vLLM's own names, rendered next to tachyon's metrics on `/metrics`:
//!
//! - `vllm:num_requests_running` (gauge): requests the engine is running.
//! - `vllm:num_requests_waiting` (gauge): requests queued for the engine.
//! - `vllm:kv_cache_usage_perc` (gauge, 0 to 1): the fraction of the KV cache's token
//!   positions in use, and `vllm:gpu_cache_usage_perc`, the same value under the name vLLM
//!   used before it (older routers read that one).
//!
//! Like vLLM's, every sample carries a `model_name` label (the served model name).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// KV positions in use and available, updated by the engine thread after each request.
#[derive(Default)]
pub struct KvUsage {
    used: AtomicU64,
    capacity: AtomicU64,
}

impl KvUsage {
    pub fn set(&self, used: usize, capacity: usize) {
        self.used.store(used as u64, Ordering::Relaxed);
        self.capacity.store(capacity as u64, Ordering::Relaxed);
    }

    /// Used over capacity, 0 when there is no cache yet.
    pub fn fraction(&self) -> f64 {
        let cap = self.capacity.load(Ordering::Relaxed);
        if cap == 0 {
            return 0.0;
        }
        (self.used.load(Ordering::Relaxed) as f64 / cap as f64).clamp(0.0, 1.0)
    }
}

/// A label value escaped as the exposition format wants (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends the vLLM-named gauges to an OpenMetrics page, before its `# EOF` line.
pub fn append_vllm_gauges(
    page: &mut String,
    model_name: &str,
    running: i64,
    waiting: i64,
    kv: f64,
) {
    let eof = page.ends_with("# EOF\n");
    if eof {
        page.truncate(page.len() - "# EOF\n".len());
    }
    let m = label(model_name);
    let gauges: [(&str, &str, f64); 4] = [
        (
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            running.max(0) as f64,
        ),
        (
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            waiting.max(0) as f64,
        ),
        (
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            kv,
        ),
        (
            "vllm:gpu_cache_usage_perc",
            "KV-cache usage (the name before vllm:kv_cache_usage_perc). 1 means 100 percent usage.",
            kv,
        ),
    ];
    for (name, help, value) in gauges {
        // Writing into a String cannot fail.
        let _ = write!(
            page,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{model_name=\"{m}\"}} {value}\n"
        );
    }
    if eof {
        page.push_str("# EOF\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_go_before_eof_with_the_model_label() {
        let mut page =
            "# TYPE tachyon_requests counter\ntachyon_requests_total 3\n# EOF\n".to_string();
        let kv = KvUsage::default();
        assert_eq!(kv.fraction(), 0.0);
        kv.set(1024, 4096);
        append_vllm_gauges(&mut page, "smol\"2", 1, 2, kv.fraction());
        assert!(page.ends_with("# EOF\n"), "{page}");
        assert_eq!(page.matches("# EOF").count(), 1);
        assert!(page.contains("vllm:num_requests_running{model_name=\"smol\\\"2\"} 1\n"));
        assert!(page.contains("vllm:num_requests_waiting{model_name=\"smol\\\"2\"} 2\n"));
        assert!(page.contains("vllm:kv_cache_usage_perc{model_name=\"smol\\\"2\"} 0.25\n"));
        assert!(page.contains("vllm:gpu_cache_usage_perc{model_name=\"smol\\\"2\"} 0.25\n"));
        assert!(page.contains("# TYPE vllm:kv_cache_usage_perc gauge\n"));
        kv.set(10, 0);
        assert_eq!(kv.fraction(), 0.0);
    }
}

//! Prometheus metrics at `/metrics`: latency histograms (time to first token, inter-token
//! gap, and the server's own per-token overhead from the engine producing a token to its
//! bytes being written to the socket), token counters, queue depth and prefix-cache use.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    pub time_to_first_token: Histogram,
    pub inter_token: Histogram,
    pub server_overhead: Histogram,
    pub token_handoff: Histogram,
    pub socket_write: Histogram,
    pub queue_wait: Histogram,
    pub prompt_tokens: Counter,
    pub cached_tokens: Counter,
    pub generated_tokens: Counter,
    pub requests: Counter,
    pub cache_hits: Counter,
    pub rejected: Counter,
    pub cancelled: Counter,
    pub queue_depth: Gauge,
    pub running: Gauge,
    pub spec_verify_steps: Counter,
    pub spec_proposed: Counter,
    pub spec_accepted: Counter,
    /// KV positions in use, for the vLLM-named usage gauge (`router_metrics`).
    pub kv: super::router_metrics::KvUsage,
    pub slot_hits: Counter,
    pub slot_misses: Counter,
    pub slot_evictions: Counter,
}

/// Upper bounds in seconds from `lo` to `hi` on a 1-2-5 ladder (plus 1.5, 2.5, 3, 4 and
/// 7.5 steps so a 30 µs target falls on a bound). Built from decimal text so the bounds
/// print as written (2.5e-6, not 2.4999999e-6).
fn ladder(lo: f64, hi: f64) -> Vec<f64> {
    let mut v = Vec::new();
    for exp in -7..=2 {
        for m in ["1", "1.5", "2", "2.5", "3", "4", "5", "7.5"] {
            let b: f64 = format!("{m}e{exp}").parse().unwrap_or(f64::NAN);
            if b >= lo * 0.999 && b <= hi * 1.001 {
                v.push(b);
            }
        }
    }
    v
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tachyon");
        let time_to_first_token = Histogram::new(ladder(1e-3, 60.0));
        let inter_token = Histogram::new(ladder(1e-4, 10.0));
        let server_overhead = Histogram::new(ladder(1e-6, 0.1));
        let token_handoff = Histogram::new(ladder(1e-6, 0.1));
        let socket_write = Histogram::new(ladder(1e-6, 0.1));
        let queue_wait = Histogram::new(ladder(1e-5, 60.0));
        let m = Metrics {
            registry: Registry::default(),
            time_to_first_token,
            inter_token,
            server_overhead,
            token_handoff,
            socket_write,
            queue_wait,
            prompt_tokens: Counter::default(),
            cached_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            requests: Counter::default(),
            cache_hits: Counter::default(),
            rejected: Counter::default(),
            cancelled: Counter::default(),
            queue_depth: Gauge::default(),
            running: Gauge::default(),
            spec_verify_steps: Counter::default(),
            spec_proposed: Counter::default(),
            spec_accepted: Counter::default(),
            kv: Default::default(),
            slot_hits: Counter::default(),
            slot_misses: Counter::default(),
            slot_evictions: Counter::default(),
        };
        registry.register(
            "slot_hits",
            "Requests that took a slot whose kept tokens share a prefix with the prompt",
            m.slot_hits.clone(),
        );
        registry.register(
            "slot_misses",
            "Requests whose prompt shares no prefix with any slot",
            m.slot_misses.clone(),
        );
        registry.register(
            "slot_evictions",
            "Misses that took a slot holding another sequence (least recently used)",
            m.slot_evictions.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Request arrival to first generated token (queue wait and prefill included)",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "inter_token_seconds",
            "Time between consecutive generated tokens of a request",
            m.inter_token.clone(),
        );
        registry.register(
            "server_overhead_seconds",
            "Per token: the engine producing it to its bytes being handed to the kernel (the socket write call)",
            m.server_overhead.clone(),
        );
        registry.register(
            "token_handoff_seconds",
            "Per token: the engine producing it to its chunk being ready in the connection's task (the part of the overhead spent crossing threads)",
            m.token_handoff.clone(),
        );
        registry.register(
            "socket_write_seconds",
            "Per token: the socket write call itself (on loopback it may include the reader running before the call returns)",
            m.socket_write.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Request arrival to the engine starting it",
            m.queue_wait.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens of finished requests",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "cached_prompt_tokens",
            "Prompt tokens whose KV was reused from the cache",
            m.cached_tokens.clone(),
        );
        registry.register(
            "generation_tokens",
            "Generated tokens",
            m.generated_tokens.clone(),
        );
        registry.register("requests", "Requests the engine ran", m.requests.clone());
        registry.register(
            "prefix_cache_hits",
            "Requests that reused at least one cached prompt token",
            m.cache_hits.clone(),
        );
        registry.register(
            "requests_rejected",
            "Requests answered 429 because the queue was full",
            m.rejected.clone(),
        );
        registry.register(
            "requests_cancelled",
            "Requests stopped early: client gone, replaced or cancelled",
            m.cancelled.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for the engine",
            m.queue_depth.clone(),
        );
        registry.register(
            "requests_running",
            "Requests the engine is running (0 or 1)",
            m.running.clone(),
        );
        registry.register(
            "speculative_verify_steps",
            "Target passes that verified a proposal (draft model or prompt lookup)",
            m.spec_verify_steps.clone(),
        );
        registry.register(
            "speculative_proposed_tokens",
            "Tokens proposed for verification",
            m.spec_proposed.clone(),
        );
        registry.register(
            "speculative_accepted_tokens",
            "Proposed tokens the target kept (acceptance rate: accepted / proposed)",
            m.spec_accepted.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn observe(h: &Histogram, d: Duration) {
        h.observe(d.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_has_the_target_bound_and_render_names_metrics() {
        let l = ladder(1e-6, 0.1);
        assert!(l.iter().any(|&b| (b - 30e-6).abs() < 1e-12), "{l:?}");
        assert!(l.windows(2).all(|w| w[0] < w[1]));
        let m = Metrics::new();
        m.server_overhead.observe(12e-6);
        m.generated_tokens.inc();
        let text = m.render();
        assert!(
            text.contains("tachyon_server_overhead_seconds_bucket{le=\"0.000015\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tachyon_server_overhead_seconds_bucket{le=\"0.00001\"} 0"),
            "{text}"
        );
        assert!(text.contains("tachyon_generation_tokens_total 1"), "{text}");
        assert!(text.contains("tachyon_queue_depth 0"));
    }
}

//! Controller metrics in Prometheus text format: calls and time spent per gRPC method.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<&'static str, (u64, f64)>>,
}

/// Counts one call and its duration when dropped.
pub struct CallTimer<'a> {
    metrics: &'a Metrics,
    method: &'static str,
    started: Instant,
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        let mut calls = self.metrics.calls.lock().unwrap_or_else(|e| e.into_inner());
        let e = calls.entry(self.method).or_default();
        e.0 += 1;
        e.1 += secs;
    }
}

impl Metrics {
    pub fn call(&self, method: &'static str) -> CallTimer<'_> {
        CallTimer { metrics: self, method, started: Instant::now() }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# TYPE walfleet_controller_rpc_total counter");
        for (m, (n, _)) in calls.iter() {
            let _ = writeln!(out, "walfleet_controller_rpc_total{{method=\"{m}\"}} {n}");
        }
        let _ = writeln!(out, "# TYPE walfleet_controller_rpc_seconds_total counter");
        for (m, (_, s)) in calls.iter() {
            let _ = writeln!(out, "walfleet_controller_rpc_seconds_total{{method=\"{m}\"}} {s:.6}");
        }
        out
    }
}

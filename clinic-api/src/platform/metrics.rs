//! The process-wide Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus recorder (installed once; later calls share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Gauges of participants who left stop being exported (and are freed) 30 s after
            // their last update; they are updated about once a second while the participant is
            // there. Histograms are Prometheus histograms with fixed buckets, a few hundred
            // bytes per series for ever; the exporter's default, summaries, keeps a minute of
            // sketches per series, which grew the heap for the first minute of a load.
            let recorder = PrometheusBuilder::new()
                .idle_timeout(
                    metrics_util::MetricKindMask::GAUGE,
                    Some(std::time::Duration::from_secs(30)),
                )
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests): then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            // Upkeep whether or not anyone scrapes /metrics: histogram samples are kept raw
            // until drained, and idle gauges are only dropped when the metrics are rendered, so
            // without it every request and every participant who ever came would stay in
            // memory (found by the join/leave churn, docs/performance.md).
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    for round in 1u64.. {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                        if round % 2 == 0 {
                            drop(upkeep.render());
                        }
                    }
                });
            handle
        })
        .clone()
}

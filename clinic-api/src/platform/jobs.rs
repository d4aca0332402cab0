//! Background jobs of a running server (audit checkpoints, image tiering, the outbox worker):
//! each runs one pass per interval until the server stops them. `app::run` starts them and stops
//! them on shutdown, so whoever starts a server (the `clinic serve` command, a test, the load
//! tester) gets the same jobs and none outlives it.
//!
//! A pass in progress is never cut short: the stop is seen between passes, and [`Jobs::stop`]
//! waits (up to a deadline) for the current passes to finish.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::platform::state::AppState;

/// How many job tasks are alive on a state (for tests and readiness; shared by every server
/// started on that state).
#[derive(Debug, Default)]
pub struct Running(AtomicUsize);

impl Running {
    /// The state's counter (`app` adds it at assembly).
    pub fn of(state: &AppState) -> &Running {
        state.get()
    }

    /// Job tasks alive now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Decrements the count when a job's task ends, however it ends (stopped, aborted, panicked).
struct Alive(Arc<Running>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// When a job's first pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum First {
    /// At once, then every interval.
    Now,
    /// After one interval.
    AfterInterval,
}

/// The jobs one server started.
pub struct Jobs {
    running: Arc<Running>,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Jobs {
    pub fn new(running: Arc<Running>) -> Self {
        Self {
            running,
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// Runs `pass` every `every` until stopped; an interval of zero means the job is off.
    pub fn every<F, Fut>(&mut self, name: &'static str, every: Duration, first: First, mut pass: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        if every.is_zero() {
            tracing::debug!(job = name, "job off");
            return;
        }
        let mut stop = self.stop.subscribe();
        self.running.0.fetch_add(1, Ordering::SeqCst);
        let alive = Alive(self.running.clone());
        let task = tokio::spawn(async move {
            let _alive = alive;
            let mut ticker = tokio::time::interval(every);
            // A slow pass delays the next one instead of causing a burst of catch-up passes.
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            if first == First::AfterInterval {
                ticker.tick().await;
            }
            loop {
                tokio::select! {
                    biased;
                    _ = stopped(&mut stop) => break,
                    _ = ticker.tick() => pass().await,
                }
            }
            tracing::debug!(job = name, "job stopped");
        });
        self.tasks.push((name, task));
    }

    /// Tells every job to stop and waits for their current passes, up to `deadline`; a job still
    /// busy then is aborted.
    pub async fn stop(self, deadline: Duration) {
        let _ = self.stop.send(true);
        let until = tokio::time::Instant::now() + deadline;
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(until, &mut task).await.is_err() {
                tracing::warn!(job = name, "job still busy at the drain deadline; aborted");
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// Resolves once `stop` says stop (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not in a caller's `select!`.
    let _ = stop.wait_for(|s| *s).await;
}

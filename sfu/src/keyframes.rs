//! Keyframe requests towards a publisher, throttled per source layer: however many subscribers
//! ask (joins, layer switches, loss), the publisher sees at most one request per interval, so a
//! busy consult never produces a keyframe storm.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct KeyframeThrottle<K> {
    interval: Duration,
    last: HashMap<K, Instant>,
}

impl<K: std::hash::Hash + Eq> KeyframeThrottle<K> {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: HashMap::new(),
        }
    }

    /// Whether a request for `source` may go out now (and records it if so).
    pub fn allow(&mut self, now: Instant, source: K) -> bool {
        match self.last.get(&source) {
            Some(t) if now.saturating_duration_since(*t) < self.interval => false,
            _ => {
                self.last.insert(source, now);
                true
            }
        }
    }

    /// Forgets a source (its publisher left).
    pub fn forget(&mut self, source: &K) {
        self.last.remove(source);
    }

    /// Forgets every source `gone` says has left (a publisher's layers and tracks at once).
    pub fn forget_where(&mut self, gone: impl Fn(&K) -> bool) {
        self.last.retain(|k, _| !gone(k));
    }

    /// Sources remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_requests_become_one_per_interval() {
        let t = Instant::now();
        let mut k = KeyframeThrottle::new(Duration::from_millis(500));
        let sent = (0..100)
            .filter(|i| k.allow(t + Duration::from_millis(i * 10), ("pub", 2u8)))
            .count();
        assert_eq!(sent, 2, "1000 ms of requests every 10 ms: two go out");
        assert!(k.allow(t, ("pub", 0u8)), "layers are throttled separately");
        k.forget(&("pub", 2u8));
        assert!(k.allow(t + Duration::from_millis(991), ("pub", 2u8)));
    }

    #[test]
    fn a_departed_publisher_is_forgotten_whole() {
        let t = Instant::now();
        let mut k = KeyframeThrottle::new(Duration::from_millis(500));
        for layer in 0..3u8 {
            assert!(k.allow(t, ("gone", layer)));
            assert!(k.allow(t, ("stays", layer)));
        }
        k.forget_where(|(who, _)| *who == "gone");
        assert_eq!(k.len(), 3, "only the departed publisher's layers go");
        assert!(
            k.allow(t, ("gone", 1)),
            "and it would be asked at once if it came back"
        );
        assert!(!k.allow(t, ("stays", 1)));
    }
}

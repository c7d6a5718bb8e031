//! Per-release request metrics: counts by status class, a latency
//! histogram, retries, and a 60-second ring of per-second buckets for the
//! windowed error rate and p50/p99 the release analysis reads. Recording is
//! a handful of relaxed atomic adds: no lock, no allocation.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Histogram bucket upper bounds, in microseconds.
pub const BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];
/// Histogram buckets: one per bound in [`BUCKETS_US`], and one above them.
pub const NB: usize = BUCKETS_US.len() + 1;
const SLOTS: usize = 60;

/// A Prometheus text exposition (version 0.0.4) built family by family:
/// each family's samples together, under one `# HELP` and one `# TYPE`
/// line (what `promtool check metrics` requires), in the order families
/// first appear.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<(String, String)>,
}

impl Exposition {
    /// Adds one sample line (`name{labels} value`) to family `family`, of
    /// `kind` (counter, gauge, histogram) with `help`.
    pub fn sample(&mut self, family: &str, kind: &str, help: &str, line: std::fmt::Arguments<'_>) {
        let i = match self.families.iter().position(|(f, _)| f == family) {
            Some(i) => i,
            None => {
                self.families.push((family.to_owned(), format!("# HELP {family} {help}\n# TYPE {family} {kind}\n")));
                self.families.len() - 1
            }
        };
        let text = &mut self.families[i].1;
        let _ = text.write_fmt(line);
        text.push('\n');
    }

    pub fn render(self) -> String {
        self.families.into_iter().map(|(_, t)| t).collect()
    }
}

#[derive(Debug)]
struct Slot {
    second: AtomicU64,
    count: AtomicU64,
    errors: AtomicU64,
    hist: [AtomicU64; NB],
}

impl Slot {
    fn new() -> Self {
        Slot {
            second: AtomicU64::new(u64::MAX),
            count: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            hist: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Responses by status class and a latency histogram: what is kept per
/// release and per backend.
#[derive(Debug)]
pub struct Traffic {
    /// Responses by status class: 1xx … 5xx (index 0 … 4).
    pub by_class: [AtomicU64; 5],
    hist: [AtomicU64; NB],
    sum_us: AtomicU64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            by_class: std::array::from_fn(|_| AtomicU64::new(0)),
            hist: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Traffic {
    /// Records one response; returns its histogram bucket.
    pub fn record(&self, status: u16, latency_us: u64) -> usize {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let b = bucket(latency_us);
        self.hist[b].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(latency_us, Ordering::Relaxed);
        b
    }

    /// Adds `{prefix}requests_total` by class and the
    /// `{prefix}request_duration_seconds` histogram, with labels `l`.
    pub fn prometheus(&self, out: &mut Exposition, prefix: &str, l: &str) {
        let (requests, duration) = (format!("{prefix}requests_total"), format!("{prefix}request_duration_seconds"));
        for (i, c) in self.by_class.iter().enumerate() {
            let help = "Responses, by status class (the load balancer's own 502/503/504 included).";
            let n = c.load(Ordering::Relaxed);
            out.sample(&requests, "counter", help, format_args!("{requests}{{{l},class=\"{}xx\"}} {n}", i + 1));
        }
        let help = "Time from the request to the response head, in seconds.";
        let mut acc = 0;
        for (i, h) in self.hist.iter().enumerate() {
            acc += h.load(Ordering::Relaxed);
            let le = BUCKETS_US.get(i).map_or("+Inf".to_owned(), |b| format!("{}", *b as f64 / 1e6));
            out.sample(&duration, "histogram", help, format_args!("{duration}_bucket{{{l},le=\"{le}\"}} {acc}"));
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        out.sample(&duration, "histogram", help, format_args!("{duration}_sum{{{l}}} {sum}"));
        out.sample(&duration, "histogram", help, format_args!("{duration}_count{{{l}}} {acc}"));
    }
}

/// Metrics of one release.
#[derive(Debug)]
pub struct ReleaseMetrics {
    pub traffic: Traffic,
    pub retries: AtomicU64,
    pub in_flight: AtomicU64,
    /// Drill faults recorded against the release (counted in `traffic`
    /// too, as analysis must see them, though no client got them).
    pub injected: AtomicU64,
    ring: Vec<Slot>,
}

impl Default for ReleaseMetrics {
    fn default() -> Self {
        ReleaseMetrics {
            traffic: Traffic::default(),
            retries: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            ring: (0..SLOTS).map(|_| Slot::new()).collect(),
        }
    }
}

fn bucket(us: u64) -> usize {
    BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len())
}

/// A load balancer's request counts since it started, over every release:
/// requests answered, those answered 5xx (the backend's or its own
/// 502/503/504), and retries. A drill's injected faults are not requests
/// here (each went on to another release, counted there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub failed: u64,
    pub retries: u64,
}

/// Error rate and latency over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowStats {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// Upper bounds of the histogram buckets holding the percentiles (µs).
    pub p50_us: u64,
    pub p99_us: u64,
    /// Responses per latency bucket ([`BUCKETS_US`], then one above them):
    /// what the release analysis's rank test compares.
    pub histogram: [u64; NB],
}

impl WindowStats {
    /// The statistics of `requests` with `errors` and latency histogram
    /// `hist`: the rate and percentiles derived from them.
    pub fn of(requests: u64, errors: u64, hist: [u64; NB]) -> WindowStats {
        let pct = |p: f64| {
            let target = (requests as f64 * p).ceil() as u64;
            let mut acc = 0;
            for (i, h) in hist.iter().enumerate() {
                acc += h;
                if acc >= target.max(1) {
                    return BUCKETS_US.get(i).copied().unwrap_or(u64::MAX);
                }
            }
            0
        };
        WindowStats {
            requests,
            errors,
            error_rate: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
            p50_us: if requests == 0 { 0 } else { pct(0.5) },
            p99_us: if requests == 0 { 0 } else { pct(0.99) },
            histogram: hist,
        }
    }

    /// Several load balancers' windows as one: counts and histograms
    /// added, the rate and percentiles of the whole (never an average of
    /// rates or of percentiles).
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a WindowStats>) -> WindowStats {
        let (mut requests, mut errors, mut hist) = (0, 0, [0u64; NB]);
        for p in parts {
            requests += p.requests;
            errors += p.errors;
            for (h, x) in hist.iter_mut().zip(&p.histogram) {
                *h += x;
            }
        }
        WindowStats::of(requests, errors, hist)
    }
}

impl ReleaseMetrics {
    /// Records one response. `now_s` is the proxy clock in seconds; 5xx
    /// (including the proxy's own 502/503/504) count as errors.
    pub fn record(&self, status: u16, latency_us: u64, now_s: u64) {
        let b = self.traffic.record(status, latency_us);
        let slot = &self.ring[(now_s % SLOTS as u64) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != now_s && slot.second.compare_exchange(seen, now_s, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // First record of a new second in this slot: forget the old one.
            // A concurrent record may land just before the reset; a window
            // statistic can lose a sample, never invent one.
            slot.count.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
            slot.hist.iter().for_each(|h| h.store(0, Ordering::Relaxed));
        }
        slot.count.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.hist[b].fetch_add(1, Ordering::Relaxed);
    }

    /// Statistics over the last `secs` seconds (at most 60), `now_s` included.
    pub fn window(&self, secs: u64, now_s: u64) -> WindowStats {
        let secs = secs.clamp(1, SLOTS as u64);
        let mut hist = [0u64; NB];
        let (mut requests, mut errors) = (0, 0);
        for s in &self.ring {
            let sec = s.second.load(Ordering::Acquire);
            if sec != u64::MAX && sec <= now_s && now_s - sec < secs {
                requests += s.count.load(Ordering::Relaxed);
                errors += s.errors.load(Ordering::Relaxed);
                for (h, x) in hist.iter_mut().zip(&s.hist) {
                    *h += x.load(Ordering::Relaxed);
                }
            }
        }
        WindowStats::of(requests, errors, hist)
    }

    /// Adds this release's series.
    pub fn prometheus(&self, out: &mut Exposition, service: &str, release: &str) {
        let l = format!("service=\"{service}\",release=\"{release}\"");
        self.traffic.prometheus(out, "kiln_proxy_", &l);
        let (retries, in_flight, injected) = (
            self.retries.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
            self.injected.load(Ordering::Relaxed),
        );
        let f = "kiln_proxy_retries_total";
        out.sample(f, "counter", "Requests retried on another backend.", format_args!("{f}{{{l}}} {retries}"));
        let f = "kiln_proxy_in_flight";
        out.sample(f, "gauge", "Requests being answered now.", format_args!("{f}{{{l}}} {in_flight}"));
        let f = "kiln_proxy_injected_faults_total";
        let help = "Faults a rollback drill injected (counted in requests too; no client got them).";
        out.sample(f, "counter", help, format_args!("{f}{{{l}}} {injected}"));
    }
}

#[cfg(test)]
mod sum_tests {
    use super::*;

    #[test]
    fn a_sum_is_the_whole_s_rate_and_percentiles_not_an_average() {
        let m1 = ReleaseMetrics::default();
        let m2 = ReleaseMetrics::default();
        // 100 fast requests with no error on one; 10 slow ones, 5 failed, on the other.
        for _ in 0..100 {
            m1.record(200, 300, 5);
        }
        for i in 0..10 {
            m2.record(if i < 5 { 500 } else { 200 }, 400_000, 5);
        }
        let (a, b) = (m1.window(10, 5), m2.window(10, 5));
        let s = WindowStats::sum([&a, &b]);
        assert_eq!((s.requests, s.errors), (110, 5));
        assert!((s.error_rate - 5.0 / 110.0).abs() < 1e-12, "not (0 + 0.5) / 2");
        assert_eq!(s.p50_us, a.p50_us, "the median is a fast request's");
        assert_eq!(s.p99_us, b.p99_us, "the 99th percentile is a slow one's");
        assert_eq!(WindowStats::sum([]), WindowStats::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windowed_error_rate_and_percentiles() {
        let m = ReleaseMetrics::default();
        for i in 0..100u64 {
            m.record(if i < 5 { 500 } else { 200 }, if i < 90 { 800 } else { 40_000 }, 1000);
        }
        let w = m.window(10, 1000);
        assert_eq!((w.requests, w.errors), (100, 5));
        assert!((w.error_rate - 0.05).abs() < 1e-9);
        assert_eq!(w.p50_us, 1_000);
        assert_eq!(w.p99_us, 50_000);
        // 70 s later the old second has left every window.
        m.record(200, 100, 1070);
        assert_eq!(m.window(60, 1070).requests, 1);
        assert_eq!(m.window(60, 1070).p99_us, 100);
    }

    #[test]
    fn prometheus_text_has_cumulative_buckets() {
        let m = ReleaseMetrics::default();
        m.record(200, 50, 1);
        m.record(503, 3_000, 1);
        let mut e = Exposition::default();
        m.prometheus(&mut e, "web", "r1");
        let other = ReleaseMetrics::default();
        other.prometheus(&mut e, "web", "r2");
        let out = e.render();
        // Each family once, its samples together, after its HELP and TYPE.
        assert_eq!(out.matches("# TYPE kiln_proxy_requests_total counter").count(), 1, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        let first = lines.iter().position(|l| l.contains("requests_total{")).unwrap();
        assert!(lines[first + 1..first + 10].iter().all(|l| l.starts_with("kiln_proxy_requests_total{")), "{out}");
        assert!(out.contains("kiln_proxy_requests_total{service=\"web\",release=\"r1\",class=\"2xx\"} 1"), "{out}");
        assert!(out.contains("kiln_proxy_requests_total{service=\"web\",release=\"r1\",class=\"5xx\"} 1"));
        assert!(out.contains("le=\"+Inf\"} 2"));
        assert!(out.contains("kiln_proxy_request_duration_seconds_count{service=\"web\",release=\"r1\"} 2"));
    }
}

//! Calibration of the canary analysis (`bench/calibrate.sh` runs it).
//!
//! For: measuring how often `analysis::judge` is wrong, on latencies
//! recorded from real servers rather than made up: `record` times requests
//! to a running server and writes one latency (µs) and status per line;
//! `replay` draws thousands of analysis windows from such recordings, over
//! a grid of traffic rates and canary shares, through the load balancer's
//! own window statistics and the real `judge`, and prints the false-fail
//! rate on identical versions, the detection rate of +2 points of errors
//! and of a doubled p99, and the share of windows judged inconclusive.
//!
//! Must never: send traffic anywhere but the loopback address it is given,
//! or loop without a bound.
//!
//! Usage:
//!   calibrate record HOST:PORT PATH REQUESTS OUT
//!   calibrate replay WINDOWS WINDOW_SECS FILE...

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kiln::proxy::metrics::ReleaseMetrics;
use kiln::release::analysis::{judge, Outcome};
use kiln::spec::AnalysisSpec;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("record") if args.len() == 5 => record(&args[1], &args[2], args[3].parse().expect("REQUESTS"), &args[4]),
        Some("replay") if args.len() >= 4 => {
            replay(args[1].parse().expect("WINDOWS"), args[2].parse().expect("WINDOW_SECS"), &args[3..])
        }
        _ => {
            eprintln!(
                "usage: calibrate record HOST:PORT PATH REQUESTS OUT | calibrate replay WINDOWS WINDOW_SECS FILE..."
            );
            std::process::exit(2);
        }
    }
}

/// One GET on a new connection (busybox httpd closes each one; the demo
/// app is asked the same way, so both are timed alike): (µs, status).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u64, u16)> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: calibrate\r\nConnection: close\r\n\r\n")?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status)?;
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)?;
    let code = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((t.elapsed().as_micros() as u64, code))
}

fn record(addr: &str, path: &str, n: usize, out: &str) {
    let addr: SocketAddr = addr.parse().expect("HOST:PORT");
    assert!(addr.ip().is_loopback(), "loopback only");
    // Four clients at once, so that the server works under some load.
    let per = n.div_ceil(4);
    let lines: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(move || {
                    (0..per)
                        .map(|_| match get(addr, path) {
                            Ok((us, code)) => format!("{us} {code}"),
                            Err(_) => "0 599".to_owned(),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().expect("client")).collect()
    });
    std::fs::write(out, lines.join("\n") + "\n").expect("write the recording");
}

/// A small deterministic generator (xorshift64*): the same figures on
/// every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Poisson(λ) by inversion for small λ, normal approximation above.
    fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda > 60.0 {
            let (u1, u2) = (self.unit().max(1e-12), self.unit());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            return (lambda + z * lambda.sqrt()).round().max(0.0) as u64;
        }
        let (l, mut k, mut p) = ((-lambda).exp(), 0u64, 1.0);
        loop {
            p *= self.unit();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }
}

/// What one canary differs by from stable.
#[derive(Clone, Copy)]
enum Change {
    None,
    /// Two more points of errors.
    Errors,
    /// Every latency doubled, so the p99 is too.
    Slower,
}

fn window(rng: &mut Rng, samples: &[(u64, bool)], n: u64, change: Change, base_err: f64) -> ReleaseMetrics {
    let m = ReleaseMetrics::default();
    for _ in 0..n {
        let (us, err) = samples[(rng.next() % samples.len() as u64) as usize];
        let extra = match change {
            Change::Errors => 0.02,
            _ => 0.0,
        };
        let failed = err || rng.unit() < base_err + extra;
        let us = match change {
            Change::Slower => us * 2,
            _ => us,
        };
        m.record(if failed { 500 } else { 200 }, us, 1_000);
    }
    m
}

fn replay(windows: usize, secs: u64, files: &[String]) {
    let defaults = AnalysisSpec::default();
    let rates = [2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];
    let shares = [0.05, 0.10, 0.20, 0.50];
    for file in files {
        let text = std::fs::read_to_string(file).expect("a recording");
        let samples: Vec<(u64, bool)> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(us, code)| Some((us.parse::<u64>().ok()?, code.parse::<u16>().ok()? >= 500)))
            .collect();
        assert!(!samples.is_empty(), "{file}: no samples");
        let mut sorted: Vec<u64> = samples.iter().map(|s| s.0).collect();
        sorted.sort_unstable();
        let pct = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64 / 1000.0;
        // A doubled p99 that rises by less than min_p99_increase_ms is no
        // regression by the analysis's own rule (sub-millisecond servers on
        // loopback): then the test's power is shown without that floor.
        let spec = if pct(0.99) > defaults.min_p99_increase_ms {
            defaults.clone()
        } else {
            AnalysisSpec { min_p99_increase_ms: 0.0, ..defaults.clone() }
        };
        println!(
            "\n{file}: {} requests recorded, p50 {:.2} ms, p99 {:.2} ms; {windows} windows of {secs} s per cell{}",
            samples.len(),
            pct(0.5),
            pct(0.99),
            if spec.min_p99_increase_ms == 0.0 {
                format!(
                    "; its p99 doubled rises by less than min_p99_increase_ms ({} ms), so it is judged here with \
                     min_p99_increase_ms = 0 (the tests' own power)",
                    defaults.min_p99_increase_ms
                )
            } else {
                String::new()
            }
        );
        println!(
            "{:>6} {:>5} | {:>10} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>9}",
            "req/s", "share", "false fail", "incon.", "+2% err", "incon.", "p99 x2", "incon.", "n canary"
        );
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Totals over windows whose canary reached min_requests, and the
        // smallest canary sample per window (in the grid) from which every
        // cell detects +2 points of errors in at least 95% of windows.
        let (mut same_n, mut same_fail, mut same_inc) = (0u64, 0u64, 0u64);
        let (mut err_n, mut err_hit) = (0u64, 0u64);
        let mut err_95_from: Option<f64> = None;
        let (mut slow_n, mut slow_hit) = (0u64, 0u64);
        for &rate in &rates {
            for &share in &shares {
                let mut cell = [[0u64; 3]; 3]; // change → [fail, inconclusive, windows]
                let mut canary_total = 0u64;
                for _ in 0..windows {
                    for (c, change) in [Change::None, Change::Errors, Change::Slower].into_iter().enumerate() {
                        let total = rng.poisson(rate * secs as f64);
                        let nc = (0..total).filter(|_| rng.unit() < share).count() as u64;
                        let canary = window(&mut rng, &samples, nc, change, 0.001);
                        let stable = window(&mut rng, &samples, total - nc, Change::None, 0.001);
                        // Identical versions and errors are judged as a
                        // service would be (the defaults); a doubled p99
                        // as said above.
                        let judged_by = if c == 2 { &spec } else { &defaults };
                        let v = judge(judged_by, &canary.window(secs, 1_000), Some(&stable.window(secs, 1_000)));
                        let full = nc >= spec.min_requests;
                        cell[c][2] += 1;
                        match v.outcome {
                            Outcome::Fail => cell[c][0] += 1,
                            Outcome::Inconclusive => cell[c][1] += 1,
                            Outcome::Pass => {}
                        }
                        if c == 0 {
                            canary_total += nc;
                        }
                        if full {
                            match (c, v.outcome) {
                                (0, o) => {
                                    same_n += 1;
                                    same_fail += u64::from(o == Outcome::Fail);
                                    same_inc += u64::from(o == Outcome::Inconclusive);
                                }
                                (1, o) => {
                                    err_n += 1;
                                    err_hit += u64::from(o == Outcome::Fail);
                                }
                                (_, o) => {
                                    slow_n += 1;
                                    slow_hit += u64::from(o == Outcome::Fail);
                                }
                            }
                        }
                    }
                }
                let pc = |c: usize, k: usize| 100.0 * cell[c][k] as f64 / cell[c][2].max(1) as f64;
                let mean_n = canary_total as f64 / windows as f64;
                if pc(1, 0) < 95.0 && mean_n >= spec.min_requests as f64 {
                    err_95_from = Some(err_95_from.map_or(mean_n, |m: f64| m.max(mean_n)));
                }
                println!(
                    "{:>6} {:>4}% | {:>9.2}% {:>8.1}% | {:>8.1}% {:>8.1}% | {:>8.1}% {:>8.1}% | {:>9.0}",
                    rate,
                    (share * 100.0) as u32,
                    pc(0, 0),
                    pc(0, 1),
                    pc(1, 0),
                    pc(1, 1),
                    pc(2, 0),
                    pc(2, 1),
                    canary_total as f64 / windows as f64
                );
            }
        }
        let r = |a: u64, b: u64| 100.0 * a as f64 / b.max(1) as f64;
        println!(
            "windows with at least min_requests ({}) canary requests: false fail {:.2}% (goal <= 0.5%), \
             inconclusive {:.1}%; detected +2% errors {:.1}%, p99 x2 {:.1}% (goal >= 95%)",
            spec.min_requests,
            r(same_fail, same_n),
            r(same_inc, same_n),
            r(err_hit, err_n),
            r(slow_hit, slow_n)
        );
        if let Some(n) = err_95_from {
            println!("+2% errors: below 95% detection in cells of up to {n:.0} canary requests per window");
        }
    }
}

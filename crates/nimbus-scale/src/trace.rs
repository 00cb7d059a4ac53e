//! Request traces for the simulator: read from a file (`arrival_seconds,service_seconds` a
//! line) or generated: the seeds' bursts, a diurnal wave, repeated spikes, a slow trickle.

use std::time::Duration;

use crate::simulate::Request;

/// A trace that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A line that is not two non-negative numbers of seconds.
    #[error("line {line}: {message} (expected `arrival_seconds,service_seconds`)")]
    Line {
        /// The line number, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No request at all.
    #[error("the trace has no request")]
    Empty,
}

/// The longest arrival time or service time a trace may hold (30 days): the simulator steps
/// through every 100 ms of it.
pub const MAX_SECONDS: f64 = 30.0 * 24.0 * 3600.0;

/// Parses a trace: one request a line, `arrival_seconds,service_seconds`; blank lines and lines
/// starting with `#` are skipped, and so is a header line naming the columns. Sorted by arrival.
pub fn parse(text: &str) -> Result<Vec<Request>, TraceError> {
    let mut trace = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || (n == 0 && line.starts_with("arrival")) {
            continue;
        }
        let bad = |message: String| TraceError::Line {
            line: n + 1,
            message,
        };
        let (a, s) = line
            .split_once(',')
            .ok_or_else(|| bad(format!("`{line}` has no comma")))?;
        let secs = |field: &str, what: &str| -> Result<Duration, TraceError> {
            let v: f64 = field
                .trim()
                .parse()
                .map_err(|_| bad(format!("{what} `{}` is not a number", field.trim())))?;
            if !(0.0..=MAX_SECONDS).contains(&v) {
                return Err(bad(format!(
                    "{what} {} is outside 0 to {MAX_SECONDS} seconds (30 days)",
                    field.trim()
                )));
            }
            Ok(Duration::from_secs_f64(v))
        };
        trace.push(Request {
            arrival: secs(a, "arrival")?,
            service: secs(s, "service time")?,
        });
    }
    if trace.is_empty() {
        return Err(TraceError::Empty);
    }
    trace.sort_by_key(|r| r.arrival);
    Ok(trace)
}

/// Writes a trace in the form [`parse`] reads.
pub fn format(trace: &[Request]) -> String {
    let mut out = String::from("arrival_seconds,service_seconds\n");
    for r in trace {
        out.push_str(&format!(
            "{:.3},{:.3}\n",
            r.arrival.as_secs_f64(),
            r.service.as_secs_f64()
        ));
    }
    out
}

/// Service times around `mean` (uniform, +-50 %), from `seed`.
fn services(n: usize, mean: Duration, seed: u64) -> Vec<Duration> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| mean.mul_f64(0.5 + rng.f64())).collect()
}

/// `n` requests at once (the seeds sent 10, 50 and 100 images together).
pub fn burst(n: usize, service: Duration, seed: u64) -> Vec<Request> {
    services(n, service, seed)
        .into_iter()
        .map(|service| Request {
            arrival: Duration::ZERO,
            service,
        })
        .collect()
}

/// A day compressed into `period`: the arrival rate rises from zero to `peak` per second and
/// back, as a cosine wave.
pub fn diurnal(period: Duration, peak: f64, service: Duration, seed: u64) -> Vec<Request> {
    let mut arrivals = Vec::new();
    let (mut t, mut owed) = (0.0f64, 0.0f64);
    let step = 0.1;
    let total = period.as_secs_f64();
    while t < total {
        let rate = peak * (1.0 - (std::f64::consts::TAU * t / total).cos()) / 2.0;
        owed += rate * step;
        while owed >= 1.0 {
            arrivals.push(Duration::from_secs_f64(t));
            owed -= 1.0;
        }
        t += step;
    }
    with_services(arrivals, service, seed)
}

/// `spikes` bursts of `size` requests, `every` apart.
pub fn spikes(
    spikes: usize,
    size: usize,
    every: Duration,
    service: Duration,
    seed: u64,
) -> Vec<Request> {
    let arrivals = (0..spikes)
        .flat_map(|k| std::iter::repeat_n(every * k as u32, size))
        .collect();
    with_services(arrivals, service, seed)
}

/// `n` requests, one every `gap`.
pub fn trickle(n: usize, gap: Duration, service: Duration, seed: u64) -> Vec<Request> {
    let arrivals = (0..n).map(|k| gap * k as u32).collect();
    with_services(arrivals, service, seed)
}

fn with_services(arrivals: Vec<Duration>, service: Duration, seed: u64) -> Vec<Request> {
    let times = services(arrivals.len(), service, seed);
    arrivals
        .into_iter()
        .zip(times)
        .map(|(arrival, service)| Request { arrival, service })
        .collect()
}

/// The generated traces the benchmarks compare policies on, by name.
pub fn generated(service: Duration, seed: u64) -> Vec<(&'static str, Vec<Request>)> {
    vec![
        ("burst-10", burst(10, service, seed)),
        ("burst-50", burst(50, service, seed)),
        ("burst-100", burst(100, service, seed)),
        (
            "diurnal",
            diurnal(Duration::from_secs(1200), 4.0, service, seed),
        ),
        (
            "spikes",
            spikes(5, 40, Duration::from_secs(240), service, seed),
        ),
        (
            "trickle",
            trickle(60, Duration::from_secs(20), service, seed),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_reads_back_what_was_written() {
        let trace = spikes(2, 3, Duration::from_secs(10), Duration::from_secs(2), 7);
        let again = parse(&format(&trace)).unwrap();
        assert_eq!(again.len(), 6);
        for (a, b) in trace.iter().zip(&again) {
            assert!((a.arrival.as_secs_f64() - b.arrival.as_secs_f64()).abs() < 1e-3);
            assert!((a.service.as_secs_f64() - b.service.as_secs_f64()).abs() < 1e-3);
        }
    }

    #[test]
    fn bad_lines_are_named() {
        let err = parse("# a trace\n1,2\n3;4\n").unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("no comma"), "{err}");
        let err = parse("1,-2\n").unwrap_err().to_string();
        assert!(err.contains("service time -2 is outside"), "{err}");
        let err = parse("1e300,2\n").unwrap_err().to_string();
        assert!(
            err.contains("arrival 1e300 is outside 0 to 2592000 seconds"),
            "{err}"
        );
        let err = parse("x,2\n").unwrap_err().to_string();
        assert!(err.contains("arrival `x` is not a number"), "{err}");
        assert!(matches!(parse("# nothing\n"), Err(TraceError::Empty)));
    }

    #[test]
    fn generators_make_what_they_say() {
        let d = Duration::from_secs(2);
        assert_eq!(burst(50, d, 1).len(), 50);
        assert!(burst(50, d, 1).iter().all(|r| r.arrival.is_zero()));
        let wave = diurnal(Duration::from_secs(1000), 2.0, d, 1);
        // The mean rate of the wave is half its peak: about 1,000 requests.
        assert!((900..=1100).contains(&wave.len()), "{}", wave.len());
        let quarter = wave
            .iter()
            .filter(|r| r.arrival < Duration::from_secs(250))
            .count();
        assert!(quarter < wave.len() / 5, "the wave starts low: {quarter}");
        assert_eq!(spikes(3, 4, Duration::from_secs(60), d, 1).len(), 12);
        let t = trickle(5, Duration::from_secs(20), d, 1);
        assert_eq!(t[4].arrival, Duration::from_secs(80));
        assert!(t
            .iter()
            .all(|r| r.service >= d / 2 && r.service <= d * 3 / 2));
    }
}

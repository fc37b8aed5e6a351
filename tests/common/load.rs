//! A bounded load loop for the front door's "no failed request" tests: a few clients on
//! 127.0.0.1, each sending `GET /` with a `Host:` through nginx on a connection of its own, one
//! request after the other with a short pause, until the test says stop, the request budget is
//! spent or a time limit passes (so it stops by itself, also when a test panics). Every request
//! is kept with when it was sent and answered, so a test can say which release answered when.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request: when it was sent and answered (from the start of the load), and what came
/// back: the status and the first line of the body, or why there was no answer.
#[derive(Debug, Clone)]
pub struct Sample {
    pub sent: Duration,
    pub done: Duration,
    pub outcome: Result<(u16, String), String>,
}

impl Sample {
    /// A failed request: no HTTP answer, or a 5xx.
    pub fn failed(&self) -> bool {
        !matches!(&self.outcome, Ok((status, _)) if *status < 500)
    }

    /// The first line of a good answer (the app's version).
    pub fn body(&self) -> Option<&str> {
        match &self.outcome {
            Ok((status, body)) if *status < 500 => Some(body.as_str()),
            _ => None,
        }
    }

    pub fn latency(&self) -> Duration {
        self.done.saturating_sub(self.sent)
    }
}

/// The clients, running until [`Load::finish`] (or dropped).
pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Sample>>>,
    started: Instant,
}

/// What the load saw.
#[derive(Debug)]
pub struct Report {
    pub samples: Vec<Sample>,
    /// How long the load ran.
    pub elapsed: Duration,
}

/// What a load runs against.
pub struct Target<'a> {
    pub port: u16,
    pub host: &'a str,
    pub clients: usize,
    /// Requests in all, at most.
    pub budget: usize,
    /// The pause of each client between two requests.
    pub pause: Duration,
    /// The longest the load runs.
    pub limit: Duration,
}

impl Target<'_> {
    /// 4 clients, at most 20,000 requests, a 2 ms pause, 5 minutes at most.
    pub fn through(port: u16, host: &str) -> Target<'_> {
        Target {
            port,
            host,
            clients: 4,
            budget: 20_000,
            pause: Duration::from_millis(2),
            limit: Duration::from_secs(300),
        }
    }
}

impl Load {
    pub fn start(target: &Target) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let budget = Arc::new(AtomicUsize::new(target.budget));
        let started = Instant::now();
        let clients = (0..target.clients)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let budget = Arc::clone(&budget);
                let (port, host, pause, limit) = (
                    target.port,
                    target.host.to_owned(),
                    target.pause,
                    target.limit,
                );
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < limit
                        && budget
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            })
                            .is_ok()
                    {
                        let sent = started.elapsed();
                        let outcome = get(port, &host);
                        samples.push(Sample {
                            sent,
                            done: started.elapsed(),
                            outcome,
                        });
                        std::thread::sleep(pause);
                    }
                    samples
                })
            })
            .collect();
        Load {
            stop,
            clients,
            started,
        }
    }

    /// How long the load has run: mark the start and end of an operation with it.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the clients and collects what they saw, in the order the requests were sent.
    pub fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples: Vec<Sample> = self
            .clients
            .drain(..)
            .flat_map(|client| client.join().expect("a load client panicked"))
            .collect();
        samples.sort_by_key(|s| s.sent);
        Report {
            samples,
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `GET /` on a connection of its own: the status and the body's first line.
fn get(port: u16, host: &str) -> Result<(u16, String), String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.lines().next().unwrap_or("").to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

impl Report {
    pub fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.failed()).collect()
    }

    /// Requests sent between `from` and `to` (load time).
    pub fn during(&self, from: Duration, to: Duration) -> usize {
        self.samples
            .iter()
            .filter(|s| s.sent >= from && s.sent <= to)
            .count()
    }

    /// No request failed, and each answer came from one of `versions`.
    pub fn assert_all_answered_by(&self, versions: &[&str], what: &str) {
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "{what}: {} of {} requests failed, e.g. {:?}",
            failures.len(),
            self.samples.len(),
            &failures[..failures.len().min(5)]
        );
        let strangers: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| !s.body().is_some_and(|b| versions.contains(&b)))
            .collect();
        assert!(
            strangers.is_empty(),
            "{what}: answers from neither of {versions:?}: {:?}",
            &strangers[..strangers.len().min(5)]
        );
    }

    /// Once a request answered `new`, no request sent more than `grace` after that answer
    /// came back got `old`. Returns how long after it the last `old` answer was sent (zero when
    /// none was).
    pub fn assert_never_back(&self, old: &str, new: &str, grace: Duration, what: &str) -> Duration {
        let Some(first_new) = self
            .samples
            .iter()
            .filter(|s| s.body() == Some(new))
            .map(|s| s.done)
            .min()
        else {
            return Duration::ZERO;
        };
        let back: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.sent > first_new && s.body() == Some(old))
            .collect();
        let spread = back
            .iter()
            .map(|s| s.sent - first_new)
            .max()
            .unwrap_or_default();
        assert!(
            spread <= grace,
            "{what}: {} requests sent after the first answer of {new:?} (at {first_new:?}) got {old:?}, the last {spread:?} after it, e.g. {:?}",
            back.len(),
            &back[back.len().saturating_sub(5)..]
        );
        spread
    }

    /// The answer of the requests sent last: what serves once the operation is over.
    pub fn last_body(&self) -> Option<&str> {
        self.samples.last().and_then(Sample::body)
    }

    pub fn count(&self, version: &str) -> usize {
        self.samples
            .iter()
            .filter(|s| s.body() == Some(version))
            .count()
    }

    pub fn longest(&self) -> Duration {
        self.samples
            .iter()
            .map(Sample::latency)
            .max()
            .unwrap_or_default()
    }
}

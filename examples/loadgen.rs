//! Load generator for `scripts/bench`: a tonic client with an HDR histogram.
//! Prints one JSON object with the result.
//!
//! ```text
//! loadgen --socket S [--cert c.pem --key c.key --ca ca.pem] --mode unary|stream|bidi|handshake|idle
//!         [--conns 1] [--inflight 1] [--duration 3s] [--warmup 1s] [--payload 64]
//!         [--watch-pid P]
//! ```
//!
//! TLS session resumption is off: every handshake is a full one, against every
//! target alike.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use hyper_util::rt::TokioIo;
use ipcgate::pb::echo_client::EchoClient;
use ipcgate::pb::EchoRequest;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Mode {
    /// Unary calls, latency and throughput.
    Unary,
    /// Server-streaming calls of 64 KiB messages: throughput in MiB/s.
    Stream,
    /// Bidi ping-pong on one long stream: latency per round trip.
    Bidi,
    /// A fresh connection (full TLS handshake) plus one unary call, repeated.
    Handshake,
    /// Open `--conns` connections with one call each, hold them, and report how
    /// much the RSS of `--watch-pid` grew per connection; then call on every
    /// 100th to show idle connections still answer.
    Idle,
}

#[derive(Parser)]
struct Args {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long)]
    ca: Option<PathBuf>,
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value_t = 1)]
    conns: usize,
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    #[arg(long, value_parser = ipcgate::duration::parse, default_value = "3s")]
    duration: Duration,
    #[arg(long, value_parser = ipcgate::duration::parse, default_value = "1s")]
    warmup: Duration,
    #[arg(long, default_value_t = 64)]
    payload: usize,
    #[arg(long, default_value = "")]
    label: String,
    /// Process whose RSS `--mode idle` watches (the proxy).
    #[arg(long)]
    watch_pid: Option<u32>,
    /// Unary: a pause after each call (sparse traffic, e.g. "1ms").
    #[arg(long, value_parser = ipcgate::duration::parse)]
    pause: Option<Duration>,
    /// Add the latency histogram to the JSON line (`"hist": [[µs, count], ...]`,
    /// each bucket's highest equivalent value), so runs split into slices can
    /// be merged into one histogram before their percentiles are read.
    #[arg(long)]
    hist: bool,
}

#[derive(Clone)]
struct Dialer {
    socket: PathBuf,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Dialer {
    async fn channel(&self) -> anyhow::Result<Channel> {
        let d = self.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let d = d.clone();
            async move {
                match &d.tls {
                    Some(cfg) => ipcgate::client::connect(&d.socket, "localhost", cfg.clone())
                        .await
                        .map(|s| TokioIo::new(Box::new(s) as Box<dyn Io>)),
                    None => tokio::net::UnixStream::connect(&d.socket)
                        .await
                        .map(|s| TokioIo::new(Box::new(s) as Box<dyn Io>)),
                }
            }
        });
        Ok(Endpoint::from_static("http://localhost")
            .connect_with_connector(connector)
            .await?)
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

fn client(ch: Channel) -> EchoClient<Channel> {
    EchoClient::new(ch).max_decoding_message_size(64 << 20)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let tls = match (&a.cert, &a.key, &a.ca) {
        (Some(c), Some(k), Some(ca)) => {
            let mut cfg = (*ipcgate::client::config_from_files(c, k, ca)?).clone();
            cfg.resumption = rustls::client::Resumption::disabled();
            Some(Arc::new(cfg))
        }
        _ => None,
    };
    let dialer = Dialer {
        socket: a.socket.clone(),
        tls,
    };
    if a.mode == Mode::Idle {
        return idle(&a, &dialer).await;
    }
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut channels = Vec::new();
    if a.mode != Mode::Handshake {
        for _ in 0..a.conns {
            channels.push(dialer.channel().await?);
        }
    }
    let start = Instant::now();
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    let mut tasks = Vec::new();
    for w in 0..a.conns * a.inflight.max(1) {
        let ch = channels.get(w % a.conns.max(1)).cloned();
        let dialer = dialer.clone();
        let payload = vec![0x5a; a.payload];
        let mode = a.mode;
        let pause = a.pause;
        let total = total.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut bytes = 0u64;
            let mut errors = 0u64;
            match mode {
                Mode::Unary => {
                    let mut c = client(ch.expect("channel"));
                    loop {
                        let t = Instant::now();
                        if t >= end {
                            break;
                        }
                        let r = c
                            .unary(EchoRequest {
                                payload: payload.clone(),
                                ..Default::default()
                            })
                            .await;
                        if r.is_ok() {
                            total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        if t >= measure_from {
                            match r {
                                Ok(_) => hist.saturating_record(t.elapsed().as_micros() as u64),
                                Err(_) => errors += 1,
                            }
                        }
                        if let Some(p) = pause {
                            tokio::time::sleep(p).await;
                        }
                    }
                }
                Mode::Stream => {
                    let mut c = client(ch.expect("channel"));
                    let msg = vec![0x5a; 64 * 1024];
                    while Instant::now() < end {
                        let req = EchoRequest {
                            payload: msg.clone(),
                            count: 256,
                            ..Default::default()
                        };
                        let Ok(r) = c.server_stream(req).await else {
                            errors += 1;
                            continue;
                        };
                        let mut s = r.into_inner();
                        while let Some(m) = s.next().await {
                            match m {
                                Ok(m) if Instant::now() >= measure_from && Instant::now() < end => {
                                    bytes += m.payload.len() as u64
                                }
                                Ok(_) => {}
                                Err(_) => errors += 1,
                            }
                        }
                    }
                }
                Mode::Bidi => {
                    let mut c = client(ch.expect("channel"));
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    // The first ping is queued before the call starts: a proxy
                    // that holds response headers until the client's first
                    // message (nginx 1.22) is measured instead of hanging.
                    tx.send(EchoRequest {
                        payload: payload.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("send");
                    let call = tokio::time::timeout(
                        Duration::from_secs(10),
                        c.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)),
                    )
                    .await;
                    let Ok(Ok(call)) = call else {
                        return (hist, bytes, errors + 1);
                    };
                    let mut replies = call.into_inner();
                    if !matches!(replies.next().await, Some(Ok(_))) {
                        return (hist, bytes, errors + 1);
                    }
                    loop {
                        let t = Instant::now();
                        if t >= end {
                            break;
                        }
                        tx.send(EchoRequest {
                            payload: payload.clone(),
                            ..Default::default()
                        })
                        .await
                        .expect("send");
                        match replies.next().await {
                            Some(Ok(_)) if t >= measure_from => {
                                hist.saturating_record(t.elapsed().as_micros() as u64)
                            }
                            Some(Ok(_)) => {}
                            _ => {
                                errors += 1;
                                break;
                            }
                        }
                    }
                }
                Mode::Handshake => loop {
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    let r = async {
                        let mut c = client(dialer.channel().await?);
                        c.unary(EchoRequest {
                            payload: payload.clone(),
                            ..Default::default()
                        })
                        .await?;
                        anyhow::Ok(())
                    }
                    .await;
                    if t >= measure_from {
                        match r {
                            Ok(()) => hist.saturating_record(t.elapsed().as_micros() as u64),
                            Err(_) => errors += 1,
                        }
                    }
                },
                Mode::Idle => {}
            }
            (hist, bytes, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut bytes, mut errors) = (0u64, 0u64);
    for t in tasks {
        let (h, b, e) = t.await?;
        hist.add(&h)?;
        bytes += b;
        errors += e;
    }
    let secs = a.duration.as_secs_f64();
    let buckets = if a.hist {
        let b: Vec<String> = hist
            .iter_recorded()
            .map(|v| format!("[{},{}]", v.value_iterated_to(), v.count_at_value()))
            .collect();
        format!(",\"hist\":[{}]", b.join(","))
    } else {
        String::new()
    };
    println!(
        "{{\"label\":{:?},\"mode\":\"{:?}\",\"conns\":{},\"inflight\":{},\"calls\":{},\"calls_total\":{},\"errors\":{},\"rps\":{:.1},\"p50_us\":{},\"p99_us\":{},\"mib_s\":{:.1}{}}}",
        a.label,
        a.mode,
        a.conns,
        a.inflight,
        hist.len(),
        total.load(std::sync::atomic::Ordering::Relaxed),
        errors,
        hist.len() as f64 / secs,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        bytes as f64 / secs / (1024.0 * 1024.0),
        buckets,
    );
    Ok(())
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
}

async fn idle(a: &Args, dialer: &Dialer) -> anyhow::Result<()> {
    let pid = a
        .watch_pid
        .ok_or_else(|| anyhow::anyhow!("--mode idle needs --watch-pid"))?;
    let before = rss_kib(pid)?;
    let opened = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.conns {
        let permit = opened.clone().acquire_owned().await?;
        let dialer = dialer.clone();
        tasks.spawn(async move {
            let mut c = client(dialer.channel().await?);
            c.unary(EchoRequest::default()).await?;
            drop(permit);
            anyhow::Ok(c)
        });
    }
    let mut clients = Vec::with_capacity(a.conns);
    let mut errors = 0u64;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(c) => clients.push(c),
            Err(_) => errors += 1,
        }
    }
    // Let the proxy settle (buffers released after the first calls).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    let mut late_errors = 0u64;
    for c in clients.iter_mut().step_by(100) {
        if c.unary(EchoRequest::default()).await.is_err() {
            late_errors += 1;
        }
    }
    let held = clients.len().max(1) as f64;
    println!(
        "{{\"label\":{:?},\"mode\":\"Idle\",\"conns\":{},\"errors\":{},\"late_errors\":{},\"rss_before_kib\":{},\"rss_after_kib\":{},\"kib_per_conn\":{:.1}}}",
        a.label,
        clients.len(),
        errors,
        late_errors,
        before,
        after,
        after.saturating_sub(before) as f64 / held
    );
    Ok(())
}

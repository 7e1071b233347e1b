//! Load generator for the two `benches/` figures wrk and h2load cannot give:
//!
//! - `rate`: an open-model load at a fixed request rate (as wrk2 does; wrk2 is not packaged in
//!   Debian, and h2load's `--rate` paces connections, not requests). Request *i* is due at
//!   `t0 + i/rate` whatever happened before it; its latency is measured from that due time, so a
//!   proxy that stalls is charged for the requests queued behind the stall (no coordinated
//!   omission). Plain HTTP/1.1 is written and parsed by hand (cheaper than hyper's client: the
//!   generator shares a core with the mock upstream). A pacer thread releases due requests in batches every `--tick` (100 µs); a pool of
//!   workers, each with its own keep-alive connection (HTTP/1.1) or sharing a few (h2), takes them
//!   in order. Prints one tab-separated line of name/value pairs: total (with the warm-up),
//!   sent (measured), ok (2xx), other, errors, achieved rate,
//!   p50/p90/p99/p99.9/max in µs, and how many requests waited > 1 ms for a free worker;
//!   `--trace FILE` writes each measured request's due time (µs after t0) and latency.
//! - `idle`: opens N connections (TLS optional, ALPN h2 or http/1.1), sends one request on each,
//!   then holds them all open and idle for `--hold` seconds: the proxy's memory per idle
//!   connection is read from /proc by the script while they are held (benches/idle_tls.sh).
//!
//! `cargo run --release --example loadgen -- rate --url http://127.0.0.1:8080/path --rate 20000
//!  --duration 10 --workers 64 -H 'authorization: Bearer …'`
//! Loopback only; every loop is bounded by `--duration`/`--hold` plus a drain timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex, Semaphore};

struct Opts {
    mode: String,
    url: Uri,
    addr: SocketAddr,
    headers: Vec<(HeaderName, HeaderValue)>,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    workers: usize,
    connections: usize,
    tick: Duration,
    h2: bool,
    ca: Option<String>,
    hold: Duration,
    raw_req: Vec<u8>,
    /// `--trace FILE`: one line per measured request, its due time (µs after t0) and latency.
    trace: Option<String>,
}

fn parse() -> anyhow::Result<Opts> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().context("usage: loadgen rate|idle --url URL [options]")?;
    ensure!(mode == "rate" || mode == "idle", "mode must be rate or idle, not {mode}");
    let (mut url, mut headers, mut ca) = (None, Vec::new(), None);
    let (mut rate, mut duration, mut warmup, mut workers) = (1000.0, 10.0, 1.0, 64usize);
    let (mut connections, mut tick_us, mut h2, mut hold) = (0usize, 100u64, false, 10.0);
    let mut trace = None;
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?.parse::<Uri>()?),
            "-H" | "--header" => {
                let v = value()?;
                let (name, val) = v.split_once(':').with_context(|| format!("header {v:?}: no ':'"))?;
                headers.push((name.trim().parse()?, val.trim().parse()?));
            }
            "--rate" => rate = value()?.parse()?,
            "--duration" => duration = value()?.parse()?,
            "--warmup" => warmup = value()?.parse()?,
            "--workers" => workers = value()?.parse()?,
            "--connections" => connections = value()?.parse()?,
            "--tick-us" => tick_us = value()?.parse()?,
            "--h2" => h2 = true,
            "--ca" => ca = Some(std::fs::read_to_string(value()?)?),
            "--hold" => hold = value()?.parse()?,
            "--trace" => trace = Some(value()?),
            other => bail!("unknown option {other}"),
        }
    }
    let url = url.context("--url is required")?;
    let host = url.host().context("--url needs a host")?.trim_matches(['[', ']']);
    let tls = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = SocketAddr::new(host.parse().context("--url host must be an IP address")?, port);
    ensure!(addr.ip().is_loopback(), "loopback only: {addr}");
    ensure!(tls == ca.is_some(), "https needs --ca CERT.pem (and --ca only with https)");
    ensure!(rate > 0.0 && duration > 0.0 && duration <= 600.0 && hold <= 600.0, "rate > 0, duration/hold ≤ 600 s");
    ensure!(workers > 0, "--workers > 0");
    let connections = if connections == 0 || !h2 { workers } else { connections.min(workers) };
    let mut o = Opts {
        mode,
        url,
        addr,
        headers,
        rate,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        workers,
        connections,
        tick: Duration::from_micros(tick_us.max(10)),
        h2,
        ca,
        hold: Duration::from_secs_f64(hold),
        raw_req: Vec::new(),
        trace,
    };
    o.raw_req = raw_request(&o);
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let o = Arc::new(parse()?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match o.mode.as_str() {
        "rate" => rt.block_on(rate(o)),
        _ => rt.block_on(idle(o)),
    }
}

#[derive(Clone)]
enum Sender {
    H1(Arc<Mutex<http1::SendRequest<Empty<Bytes>>>>),
    H2(http2::SendRequest<Empty<Bytes>>),
    /// Plain HTTP/1.1 written and read by hand (see [`raw_get`]).
    Raw(Arc<Mutex<(TcpStream, Vec<u8>)>>),
}

/// The request bytes of the plain HTTP/1.1 path.
fn raw_request(o: &Opts) -> Vec<u8> {
    let pq = o.url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let host = o.url.authority().map(|a| a.as_str()).unwrap_or("localhost");
    let mut r = format!("GET {pq} HTTP/1.1\r\nhost: {host}\r\n").into_bytes();
    for (k, v) in &o.headers {
        r.extend_from_slice(k.as_str().as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(v.as_bytes());
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

/// One keep-alive GET over plain HTTP/1.1 without hyper: the fixed-rate load shares its core
/// with the mock upstream, and hyper's client cost ~3x this per request, enough to make the
/// generator, not the proxy, the queue at 20,000 req/s. Reads the head, then a body framed by
/// `content-length` or chunked; the status.
async fn raw_get(req: &[u8], conn: &mut (TcpStream, Vec<u8>)) -> anyhow::Result<u16> {
    use tokio::io::AsyncWriteExt;
    let (stream, buf) = conn;
    stream.write_all(req).await?;
    buf.clear();
    let head_end = loop {
        if let Some(p) = memchr::memmem::find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        read_more(stream, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end])?.to_ascii_lowercase();
    let status: u16 = head.get(9..12).context("status line")?.parse()?;
    let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
    if let Some(len) = header("content-length:") {
        let end = head_end + len.parse::<usize>()?;
        while buf.len() < end {
            read_more(stream, buf).await?;
        }
        ensure!(buf.len() == end, "bytes after the body (no pipelining here)");
    } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        let mut at = head_end;
        loop {
            let line_end = loop {
                if let Some(p) = memchr::memmem::find(&buf[at..], b"\r\n") {
                    break at + p;
                }
                read_more(stream, buf).await?;
            };
            let size_text = std::str::from_utf8(&buf[at..line_end])?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
            // A chunk and its CRLF; the last (size 0) ends with an empty trailer line.
            let end = line_end + 2 + size + 2;
            while buf.len() < end {
                read_more(stream, buf).await?;
            }
            at = end;
            if size == 0 {
                break;
            }
        }
    } else {
        bail!("a response without content-length or chunked framing");
    }
    Ok(status)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    buf.reserve(16 * 1024);
    ensure!(stream.read_buf(buf).await? > 0, "connection closed mid-response");
    Ok(())
}

async fn connect(o: &Opts) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(o.addr).await?;
    tcp.set_nodelay(true)?;
    if o.ca.is_none() && !o.h2 && o.mode == "rate" {
        return Ok(Sender::Raw(Arc::new(Mutex::new((tcp, Vec::with_capacity(32 * 1024))))));
    }
    match &o.ca {
        None => handshake(o, TokioIo::new(tcp)).await,
        Some(pem) => {
            use rustls_pki_types::pem::PemObject;
            let provider = cvgate::net::tls::provider();
            let cert = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())?;
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { cert, provider }))
                .with_no_client_auth();
            cfg.alpn_protocols = vec![if o.h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
            let name = rustls_pki_types::ServerName::try_from("localhost")?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await?;
            handshake(o, TokioIo::new(tls)).await
        }
    }
}

/// Trusts exactly the certificate given with `--ca` (the bench's self-signed one, which openssl
/// marks CA:TRUE, so webpki would refuse it as an end entity); signatures are still verified.
#[derive(Debug)]
struct Pinned {
    cert: rustls_pki_types::CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

async fn handshake<T>(o: &Opts, io: TokioIo<T>) -> anyhow::Result<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if o.h2 {
        let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(send))
    } else {
        let (send, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Sender::H1(Arc::new(Mutex::new(send))))
    }
}

/// One GET, body drained; the status.
async fn get(o: &Opts, s: &Sender) -> anyhow::Result<u16> {
    if let Sender::Raw(c) = s {
        return raw_get(&o.raw_req, &mut *c.lock().await).await;
    }
    let mut req = Request::get(o.url.clone());
    if !o.h2 {
        req = req.uri(o.url.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        req = req.header(http::header::HOST, o.url.authority().map(|a| a.as_str()).unwrap_or("localhost"));
    }
    for (k, v) in &o.headers {
        req = req.header(k, v);
    }
    let req = req.body(Empty::new())?;
    let resp = match s {
        Sender::H1(s) => {
            let mut s = s.lock().await;
            s.ready().await?;
            s.send_request(req).await?
        }
        Sender::H2(s) => s.clone().send_request(req).await?,
        Sender::Raw(_) => unreachable!("answered above"),
    };
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(status)
}

async fn rate(o: Arc<Opts>) -> anyhow::Result<()> {
    let mut conns = Vec::with_capacity(o.connections);
    for _ in 0..o.connections {
        conns.push(connect(&o).await?);
    }
    let period = 1.0 / o.rate;
    let total = ((o.warmup + o.duration).as_secs_f64() * o.rate) as u64;
    let first_measured = (o.warmup.as_secs_f64() * o.rate) as u64;
    let (tx, rx) = mpsc::unbounded_channel::<u64>();
    let rx = Arc::new(Mutex::new(rx));
    let t0 = Instant::now() + Duration::from_millis(20);
    // The pacer: an OS thread, because tokio's timer has 1 ms granularity; it releases every
    // request due by now, then sleeps one tick. Bounded: it stops after `total` requests.
    let tick = o.tick;
    let pacer = std::thread::spawn(move || {
        let mut next = 0u64;
        while next < total {
            let now = Instant::now();
            if now >= t0 {
                let due = (((now - t0).as_secs_f64() / period) as u64 + 1).min(total);
                while next < due {
                    if tx.send(next).is_err() {
                        return;
                    }
                    next += 1;
                }
            }
            std::thread::sleep(tick);
        }
    });
    let late = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..o.workers {
        let (o, rx, late, conn) = (o.clone(), rx.clone(), late.clone(), conns[w % conns.len()].clone());
        tasks.spawn(async move {
            let (mut lat, mut ok, mut other, mut errors) = (Vec::new(), 0u64, 0u64, 0u64);
            loop {
                let Some(i) = rx.lock().await.recv().await else { break };
                let due = t0 + Duration::from_secs_f64(i as f64 * period);
                if Instant::now().saturating_duration_since(due) > Duration::from_millis(1) {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                let status = get(&o, &conn).await;
                if i < first_measured {
                    continue;
                }
                lat.push((i, Instant::now().saturating_duration_since(due).as_micros() as u64));
                match status {
                    Ok(200..=299) => ok += 1,
                    Ok(_) => other += 1,
                    Err(_) => errors += 1,
                }
            }
            (lat, ok, other, errors)
        });
    }
    // Drain: every worker ends when the pacer has sent all and the queue is empty; a proxy that
    // stopped answering is given 10 s past the schedule, then the rest count as errors.
    let deadline = t0 + o.warmup + o.duration + Duration::from_secs(10);
    let (mut lat, mut ok, mut other, mut errors) = (Vec::new(), 0, 0, 0);
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline.into(), tasks.join_next()).await {
        let (l, a, b, c) = done?;
        lat.extend(l);
        (ok, other, errors) = (ok + a, other + b, errors + c);
    }
    tasks.abort_all();
    pacer.join().map_err(|_| anyhow::anyhow!("pacer panicked"))?;
    let measured = total - first_measured;
    errors += measured.saturating_sub(ok + other + errors);
    if let Some(path) = &o.trace {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (i, l) in &lat {
            let _ = writeln!(out, "{}\t{l}", (*i as f64 * period * 1e6) as u64);
        }
        std::fs::write(path, out)?;
    }
    let mut lat: Vec<u64> = lat.into_iter().map(|(_, l)| l).collect();
    lat.sort_unstable();
    let q = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    println!(
        "total\t{total}\tsent\t{measured}\tok\t{ok}\tother\t{other}\terrors\t{errors}\trate\t{:.0}\tp50_us\t{}\tp90_us\t{}\tp99_us\t{}\tp999_us\t{}\tmax_us\t{}\tlate_1ms\t{}",
        measured as f64 / o.duration.as_secs_f64(),
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        lat.last().copied().unwrap_or(0),
        late.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn idle(o: Arc<Opts>) -> anyhow::Result<()> {
    let n = o.workers;
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(256)); // handshakes in flight
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (o, gate) = (o.clone(), gate.clone());
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await?;
            let s = connect(&o).await?;
            let status = get(&o, &s).await?;
            drop(permit);
            anyhow::Ok((s, status))
        });
    }
    let (mut held, mut failed, mut first_err) = (Vec::with_capacity(n), 0usize, None);
    let deadline = started + Duration::from_secs(120);
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline.into(), tasks.join_next()).await {
        match done? {
            Ok((s, status)) => held.push((s, status)),
            Err(e) => {
                failed += 1;
                first_err.get_or_insert(e);
            }
        }
    }
    tasks.abort_all();
    let ok = held.iter().filter(|(_, s)| (200..300).contains(s)).count();
    // The script waits for this line, then reads the proxy's memory while the connections idle.
    println!("open\t{}\tok\t{ok}\tfailed\t{failed}\tsecs\t{:.1}", held.len(), started.elapsed().as_secs_f64());
    if let Some(e) = first_err {
        eprintln!("loadgen: first failure: {e:#}");
    }
    tokio::time::sleep(o.hold).await;
    drop(held);
    Ok(())
}

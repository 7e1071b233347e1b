//! The stand-in CV API (`cvgate mock-cv-api`): synthetic, deterministic, Dutch-looking CVs.
//!
//! It serves the same shapes as werk.nl's CV API so the demo, tests and benches exercise the
//! real proxy path. Every CV is a pure function of its id (a seeded PRNG), so two runs agree.
//!
//! - `GET /api/v1/cvs?query=…&page=N&size=K` → `{"page","size","total","results":[…]}`, K ≤ 200
//!   (default 20), header `X-Result-Count`. `header_delay_ms=D` holds the response headers back
//!   D ms (upstream-timeout tests); `results=K` forces the number returned (settle tests).
//! - `GET /api/v1/cvs/{id}` → one CV.
//! - `GET /api/v1/cvs/export?limit=K` → NDJSON, one CV per line, streamed in chunks of
//!   `chunk` records (default 64); `delay_ms=D` sleeps D ms between chunks.
//! - `GET /api/v1/vacancies` → a non-CV route.
//! - `GET|POST /debug/echo` → the request's method, path and headers as JSON (header tests); a
//!   POST body is read to the end and its length reported. The response carries hop-by-hop
//!   headers the proxy must remove.
//! - `GET /debug/bytes?mib=N` → N MiB of NDJSON-like filler, streamed (memory tests).
//!
//! Like a real backend it is less kind than a test would like ([`MockOptions`]):
//! - CV answers are compressed (gzip, br, zstd, deflate) when the request's `Accept-Encoding`
//!   asks, or always in `force_encoding` (`--force-encoding`; an unknown name such as
//!   `x-custom` sends plain bytes labelled with it);
//! - search and export answer `Range: bytes=A-B` / `bytes=A-` (or `?range=bytes=A-B`, as some
//!   APIs take it in the query) with `206 Partial Content` and `Content-Range`;
//! - `results_key` (`--results-key`) renames the search's result array (a backend that changed
//!   its JSON), and `?format=csv` answers a search as `text/csv`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::count::codec::Coding;
use crate::problem::{full, ProxyBody};

/// How the mock misbehaves like a real backend (see the module docs).
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Content coding applied to every CV answer whatever the client asked.
    pub force_encoding: Option<String>,
    /// The search answer's result array key.
    pub results_key: String,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self { force_encoding: None, results_key: "results".into() }
    }
}

/// Total CVs in the synthetic corpus.
pub const TOTAL: u64 = 1_000_000;
/// Largest page the search returns.
pub const MAX_SIZE: u64 = 200;

/// First names; an even index is a man's name, an odd one a woman's (`geslacht`).
const FIRST: [&str; 16] = [
    "Daan", "Sanne", "Lucas", "Emma", "Milan", "Julia", "Sem", "Tess", "Bram", "Fleur", "Thijs", "Lotte", "Jesse",
    "Noor", "Ruben", "Anouk",
];
const LAST: [&str; 16] = [
    "de Jong",
    "Jansen",
    "de Vries",
    "van den Berg",
    "van Dijk",
    "Bakker",
    "Visser",
    "Smit",
    "Meijer",
    "de Boer",
    "Mulder",
    "de Groot",
    "Bos",
    "Vos",
    "Peters",
    "Hendriks",
];
/// Places of residence with their province (`regio`, which is not contact data) and the first two
/// digits of their postcodes.
const CITIES: [(&str, &str, u64); 12] = [
    ("Amsterdam", "Noord-Holland", 10),
    ("Rotterdam", "Zuid-Holland", 30),
    ("Utrecht", "Utrecht", 35),
    ("Den Haag", "Zuid-Holland", 25),
    ("Eindhoven", "Noord-Brabant", 56),
    ("Groningen", "Groningen", 97),
    ("Tilburg", "Noord-Brabant", 50),
    ("Almere", "Flevoland", 13),
    ("Breda", "Noord-Brabant", 48),
    ("Nijmegen", "Gelderland", 65),
    ("Zwolle", "Overijssel", 80),
    ("Leeuwarden", "Friesland", 89),
];
const STREETS: [&str; 12] = [
    "Kerkstraat",
    "Dorpsstraat",
    "Schoolstraat",
    "Molenweg",
    "Stationsweg",
    "Julianastraat",
    "Beatrixlaan",
    "Nieuwstraat",
    "Industrieweg",
    "Eikenlaan",
    "Wilhelminapark",
    "Zuiderdiep",
];
/// Letters of a postcode's suffix (PTT never used F, I, O, Q, U, Y).
const POSTCODE_LETTERS: &[u8; 20] = b"ABCDEGHJKLMNPRSTVWXZ";
const MAIL_DOMAINS: [&str; 4] = ["example.nl", "voorbeeld.nl", "mail.example", "post.example.nl"];
const SKILLS: [&str; 16] = [
    "heftruck",
    "VCA",
    "Excel",
    "klantcontact",
    "lassen",
    "zorg",
    "logistiek",
    "boekhouding",
    "Java",
    "schoonmaak",
    "rijbewijs C",
    "horeca",
    "Engels",
    "Duits",
    "planning",
    "verkoop",
];
const ROLES: [&str; 10] = [
    "orderpicker",
    "verpleegkundige",
    "administratief medewerker",
    "monteur",
    "chauffeur",
    "kok",
    "klantenservicemedewerker",
    "developer",
    "schoonmaker",
    "magazijnmedewerker",
];
const EMPLOYERS: [&str; 8] =
    ["Albert Heijn", "PostNL", "Gemeente Utrecht", "Randstad", "Philips", "NS", "Jumbo", "Rabobank"];
const EDUCATION: [&str; 5] = ["mbo 2", "mbo 4", "hbo", "wo", "vmbo"];

/// SplitMix64: a tiny, good-enough PRNG so each CV is a pure function of its id.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// One CV as the backend serves it, a JSON object (no trailing newline), appended to `out`.
///
/// Shape: `id`; the contact data (`naam`, `geslacht`, `geboortedatum`, `adres {straat,
/// huisnummer}`, `postcode`, `woonplaats`, `email`, `telefoon`), present only when the job
/// seeker chose `toon_contactgegevens` (about two in three; the backend shows the others
/// anonymously), `telefoon` only with `toon_telefoon` too; then both choices and the profile
/// (`beroep`, `vaardigheden`, `werkervaring [{functie, werkgever, jaren}]`, `opleiding`,
/// `samenvatting`, `regio`: a province, not contact data). 450–800 bytes. Written straight into
/// `out` (no allocation of its own): benches build pages and exports from it.
pub fn write_cv(out: &mut String, id: u64) {
    let mut r = Rng(id.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xC0FFEE);
    let first_at = r.below(FIRST.len() as u64) as usize;
    let (first, last) = (FIRST[first_at], r.pick(&LAST));
    let (city, province, area) = r.pick(&CITIES);
    let toon_contact = r.below(3) != 0;
    let toon_telefoon = r.below(2) == 0;
    let _ = write!(out, r#"{{"id":"cv-{id:07}""#);
    if toon_contact {
        let gender = if first_at.is_multiple_of(2) { "man" } else { "vrouw" };
        let (year, month, day) = (1960 + r.below(47), 1 + r.below(12), 1 + r.below(28));
        let (street, number) = (r.pick(&STREETS), 1 + r.below(180));
        let suffix = ["", "", "", "a", "b", "-2"][r.below(6) as usize];
        let digits = area * 100 + r.below(100);
        let (a, b) = (r.pick(POSTCODE_LETTERS) as char, r.pick(POSTCODE_LETTERS) as char);
        let _ = write!(
            out,
            r#","naam":"{first} {last}","geslacht":"{gender}","geboortedatum":"{year}-{month:02}-{day:02}","adres":{{"straat":"{street}","huisnummer":"{number}{suffix}"}},"postcode":"{digits} {a}{b}","woonplaats":"{city}","email":""#,
        );
        out.extend(first.chars().map(|c| c.to_ascii_lowercase()));
        out.push('.');
        out.extend(last.chars().filter(|c| *c != ' ').map(|c| c.to_ascii_lowercase()));
        let _ = write!(out, "@{}\"", r.pick(&MAIL_DOMAINS));
        if toon_telefoon {
            let _ = write!(out, r#","telefoon":"06-{:08}""#, r.below(100_000_000));
        }
    }
    let role = r.pick(&ROLES);
    let _ = write!(
        out,
        r#","toon_contactgegevens":{toon_contact},"toon_telefoon":{toon_telefoon},"beroep":"{role}","vaardigheden":["{}","{}","{}"],"werkervaring":["#,
        r.pick(&SKILLS),
        r.pick(&SKILLS),
        r.pick(&SKILLS),
    );
    let jobs = 1 + r.below(3);
    let mut years = 0;
    for n in 0..jobs {
        let (functie, employer, jaren) = if n == 0 {
            (role, r.pick(&EMPLOYERS), 1 + r.below(12))
        } else {
            (r.pick(&ROLES), r.pick(&EMPLOYERS), 1 + r.below(8))
        };
        years += jaren;
        let comma = if n == 0 { "" } else { "," };
        let _ = write!(out, r#"{comma}{{"functie":"{functie}","werkgever":"{employer}","jaren":{jaren}}}"#);
    }
    let _ = write!(
        out,
        r#"],"opleiding":"{}","samenvatting":"Gemotiveerde {role} uit {province} met {years} jaar ervaring, zoekt een nieuwe uitdaging.","regio":"{province}"}}"#,
        r.pick(&EDUCATION),
    );
}

fn query_param<'a>(q: &'a str, name: &str) -> Option<&'a str> {
    q.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

fn num(q: &str, name: &str) -> Option<u64> {
    query_param(q, name).and_then(|v| v.parse().ok())
}

fn json(status: StatusCode, body: String) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("response")
}

/// Stable offset of a query in the corpus, so a repeated search returns the same CVs.
fn query_offset(q: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64; // FNV-1a
    for b in query_param(q, "query").unwrap_or("").bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h % (TOTAL / 2)
}

async fn search(q: &str, opts: &MockOptions) -> Response<ProxyBody> {
    if let Some(ms) = num(q, "header_delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let size = num(q, "size").unwrap_or(20).clamp(1, MAX_SIZE);
    let page = num(q, "page").unwrap_or(1).max(1);
    let total = 10_000u64;
    let start = (page - 1) * size;
    let n = num(q, "results").unwrap_or_else(|| size.min(total.saturating_sub(start)));
    let base = query_offset(q) + start;
    let mut out = String::with_capacity(64 + n as usize * 800);
    if query_param(q, "format") == Some("csv") {
        out.push_str("id,record\n");
        for i in 0..n {
            let _ = write!(out, "{},\"", base + i + 1);
            write_cv(&mut out, base + i + 1);
            out.push_str("\"\n");
        }
        let mut r = json(StatusCode::OK, out);
        r.headers_mut().insert(header::CONTENT_TYPE, "text/csv".parse().expect("static"));
        return r;
    }
    let key = &opts.results_key;
    let _ = write!(out, r#"{{"page":{page},"size":{size},"total":{total},"{key}":["#);
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        write_cv(&mut out, base + i + 1);
    }
    out.push_str("]}");
    let mut r = json(StatusCode::OK, out);
    r.headers_mut().insert("x-result-count", n.into());
    r
}

/// `bytes=A-B` or `bytes=A-` of a body of `len` bytes, as an inclusive range.
fn byte_range(spec: &str, len: usize) -> Option<(usize, usize)> {
    let (a, b) = spec.trim().strip_prefix("bytes=")?.split_once('-')?;
    let a: usize = a.trim().parse().ok()?;
    let b: usize = if b.trim().is_empty() { len.checked_sub(1)? } else { b.trim().parse().ok()? };
    (a <= b && a < len).then_some((a, b.min(len - 1)))
}

/// A `206 Partial Content` answer with the requested bytes of `resp`'s (plain) body.
async fn partial(resp: Response<ProxyBody>, spec: &str) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let Ok(all) = body.collect().await.map(|b| b.to_bytes()) else {
        return json(StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"body"}"#.into());
    };
    let Some((a, b)) = byte_range(spec, all.len()) else {
        let mut r = json(StatusCode::RANGE_NOT_SATISFIABLE, r#"{"error":"range"}"#.into());
        r.headers_mut().insert(header::CONTENT_RANGE, format!("bytes */{}", all.len()).parse().expect("ascii"));
        return r;
    };
    parts.status = StatusCode::PARTIAL_CONTENT;
    parts.headers.remove("x-result-count");
    parts.headers.insert(header::CONTENT_RANGE, format!("bytes {a}-{b}/{}", all.len()).parse().expect("ascii"));
    Response::from_parts(parts, full(all.slice(a..=b)))
}

/// Compress `resp` as the client asked (or as forced), like a backend with compression on.
fn compressed(resp: Response<ProxyBody>, accept: Option<&str>, opts: &MockOptions) -> Response<ProxyBody> {
    let (name, coding) = match &opts.force_encoding {
        Some(f) => {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONTENT_ENCODING, f.parse().expect("a header value"));
            (f.clone(), crate::count::codec::content_coding(&h).ok().flatten())
        }
        None => match accept.and_then(negotiate_any) {
            Some(c) => (c.as_str().to_string(), Some(c)),
            None => return resp,
        },
    };
    let (mut parts, body) = resp.into_parts();
    parts.headers.insert(header::CONTENT_ENCODING, name.parse().expect("a header value"));
    parts.headers.append(header::VARY, "accept-encoding".parse().expect("static"));
    let body = match coding {
        Some(c) => crate::count::codec::encode(body, c),
        None => body, // a coding nobody knows: plain bytes under its name
    };
    Response::from_parts(parts, body)
}

/// The client's preferred coding, deflate included (a backend offers what it has).
fn negotiate_any(accept: &str) -> Option<Coding> {
    crate::count::codec::negotiate(Some(accept)).or_else(|| {
        accept.split(',').any(|c| c.split(';').next().is_some_and(|n| n.trim() == "deflate")).then_some(Coding::Deflate)
    })
}

fn export(q: &str) -> Response<ProxyBody> {
    let limit = num(q, "limit").unwrap_or(1000).min(TOTAL);
    let chunk = num(q, "chunk").unwrap_or(64).max(1);
    let delay = Duration::from_millis(num(q, "delay_ms").unwrap_or(0));
    let base = query_offset(q);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, crate::problem::BoxError>>(4);
    tokio::spawn(async move {
        let mut id = 0;
        while id < limit {
            let mut buf = String::with_capacity(chunk as usize * 800);
            for _ in 0..chunk.min(limit - id) {
                id += 1;
                write_cv(&mut buf, base + id);
                buf.push('\n');
            }
            if tx.send(Ok(Frame::data(Bytes::from(buf)))).await.is_err() {
                return; // client went away
            }
            if !delay.is_zero() && id < limit {
                tokio::time::sleep(delay).await;
            }
        }
    });
    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    Response::builder().header(header::CONTENT_TYPE, "application/x-ndjson").body(body).expect("response")
}

/// An mpsc receiver as a `Stream` (tokio-stream's wrapper, without the dependency).
fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn filler(q: &str) -> Response<ProxyBody> {
    let mib = num(q, "mib").unwrap_or(1);
    let line = Bytes::from(format!("{{\"filler\":\"{}\"}}\n", "x".repeat(1010)));
    let chunk: Bytes = Bytes::from(line.repeat(64)); // 64 KiB
    let chunks = mib * 16;
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, crate::problem::BoxError>(Frame::data(chunk.clone()))),
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(StreamBody::new(stream).boxed())
        .expect("response")
}

async fn echo(req: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let body_len = match body.collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_str().unwrap_or("?").to_string())))
        .collect();
    let doc = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
    });
    let mut r = json(StatusCode::OK, doc.to_string());
    let h = r.headers_mut();
    h.insert(header::CONNECTION, "x-upstream-hop".parse().expect("static"));
    h.insert("x-upstream-hop", "secret".parse().expect("static"));
    h.insert("keep-alive", "timeout=5".parse().expect("static"));
    h.insert("x-upstream-end", "kept".parse().expect("static"));
    r
}

/// Route one request of the mock API (default options).
pub async fn handle(req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    handle_with(req, &MockOptions::default()).await
}

/// Route one request of the mock API.
pub async fn handle_with(req: Request<Incoming>, opts: &MockOptions) -> Result<Response<ProxyBody>, Infallible> {
    let q = req.uri().query().unwrap_or("").to_string();
    let path = req.uri().path().to_string();
    let get = req.method() == Method::GET;
    let header = |n: header::HeaderName| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let accept = header(header::ACCEPT_ENCODING);
    let range = header(header::RANGE).or_else(|| query_param(&q, "range").map(|r| r.replace("%3D", "=")));
    let cv = path.starts_with("/api/v1/cvs");
    let resp = match (get, path.as_str()) {
        (_, "/debug/echo") => echo(req).await,
        (true, "/debug/bytes") => filler(&q),
        (true, "/api/v1/cvs" | "/api/v1/cvs/") => search(&q, opts).await,
        (true, "/api/v1/cvs/export") => export(&q),
        (true, p) if p.starts_with("/api/v1/cvs/") => {
            match p["/api/v1/cvs/".len()..].trim_start_matches("cv-").parse::<u64>() {
                Ok(id) if (1..=TOTAL).contains(&id) => {
                    let mut s = String::new();
                    write_cv(&mut s, id);
                    let mut r = json(StatusCode::OK, s);
                    r.headers_mut().insert("x-result-count", 1.into());
                    r
                }
                _ => json(StatusCode::NOT_FOUND, r#"{"error":"no such cv"}"#.into()),
            }
        }
        (true, p) if p.starts_with("/api/v1/vacancies") => json(
            StatusCode::OK,
            r#"{"results":[{"id":"v-1","title":"Orderpicker","city":"Tilburg"},{"id":"v-2","title":"Verpleegkundige","city":"Utrecht"}]}"#.into(),
        ),
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
    };
    let ranged = matches!(path.as_str(), "/api/v1/cvs" | "/api/v1/cvs/" | "/api/v1/cvs/export");
    let resp = match range {
        Some(spec) if ranged && get && resp.status() == StatusCode::OK => partial(resp, &spec).await,
        _ => resp,
    };
    if cv && resp.status().is_success() {
        return Ok(compressed(resp, accept.as_deref(), opts));
    }
    Ok(resp)
}

/// Serve the mock API on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
    serve_with(listener, MockOptions::default(), shutdown).await;
}

/// [`serve`] with [`MockOptions`].
pub async fn serve_with(listener: TcpListener, opts: MockOptions, shutdown: impl std::future::Future<Output = ()>) {
    let opts = std::sync::Arc::new(opts);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "mock accept failed"); continue; }
            },
        };
        let _ = stream.set_nodelay(true);
        let b = builder.clone();
        let opts = opts.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let opts = opts.clone();
                async move { handle_with(req, &opts).await }
            });
            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// Bind `addr` and serve forever (the `mock-cv-api` command).
pub async fn run(addr: SocketAddr, opts: MockOptions) -> anyhow::Result<()> {
    let l = TcpListener::bind(addr).await?;
    tracing::info!(addr = %l.local_addr()?, ?opts, "mock CV API listening");
    serve_with(l, opts, std::future::pending()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvs_are_deterministic_valid_json() {
        let (mut a, mut b) = (String::new(), String::new());
        write_cv(&mut a, 42);
        write_cv(&mut b, 42);
        assert_eq!(a, b);
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(v["id"], "cv-0000042");
    }

    /// The backend's Dutch CV: contact data only where the job seeker shows it, the phone only
    /// where they show that too, the profile always.
    #[test]
    fn cvs_have_the_backends_shape_and_choices() {
        const CONTACT: [&str; 8] =
            ["naam", "geslacht", "geboortedatum", "adres", "postcode", "woonplaats", "email", "telefoon"];
        const PROFILE: [&str; 6] = ["beroep", "vaardigheden", "werkervaring", "opleiding", "samenvatting", "regio"];
        let (mut shown, mut phones) = (0, 0);
        let mut s = String::new();
        for id in 1..=3000 {
            s.clear();
            write_cv(&mut s, id);
            assert!((300..900).contains(&s.len()), "{id}: {} bytes: {s}", s.len());
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            let show = v["toon_contactgegevens"].as_bool().unwrap();
            let phone = v["toon_telefoon"].as_bool().unwrap();
            for k in &CONTACT[..7] {
                assert_eq!(v.get(k).is_some(), show, "{id}: {k} in {s}");
            }
            assert_eq!(v.get("telefoon").is_some(), show && phone, "{id}: {s}");
            for k in PROFILE {
                assert!(v.get(k).is_some(), "{id}: {k} missing in {s}");
            }
            for job in v["werkervaring"].as_array().unwrap() {
                assert!(job["functie"].is_string() && job["werkgever"].is_string() && job["jaren"].is_u64(), "{s}");
            }
            if show {
                shown += 1;
                phones += u32::from(phone);
                assert!(v["adres"]["straat"].is_string() && v["adres"]["huisnummer"].is_string(), "{s}");
                let pc = v["postcode"].as_str().unwrap().as_bytes();
                assert!(pc.len() == 7 && pc[..4].iter().all(u8::is_ascii_digit) && pc[4] == b' ', "{s}");
                let born = v["geboortedatum"].as_str().unwrap();
                assert!(jiff::civil::Date::strptime("%Y-%m-%d", born).is_ok(), "{born}");
                assert!(v["email"].as_str().unwrap().contains('@'), "{s}");
                assert!(["man", "vrouw"].contains(&v["geslacht"].as_str().unwrap()), "{s}");
            }
            // The province is profile data; the residence must not leak through the summary.
            if let Some(city) = v["woonplaats"].as_str() {
                assert!(!v["samenvatting"].as_str().unwrap().contains(city) || v["regio"] == city, "{s}");
            }
        }
        assert!((1850..2150).contains(&shown), "{shown} of 3000 show their contact data");
        assert!((shown * 2 / 5..shown * 3 / 5).contains(&phones), "{phones} of {shown} show their phone");
    }
}

//! Content codings on the way through: decode what an upstream compressed, so that records can
//! be counted (and cut) in the plain bytes, and encode again toward a client that asked for it.
//!
//! Owns two body layers and the header grammar around them:
//! - [`decode`]: gzip, deflate (zlib), br and zstd, streaming, with bounded memory (one input
//!   chunk, the codec's window, one 32 KiB output buffer; zstd windows capped at 2^27) and a
//!   decompression-bomb guard ([`BombGuard`]: a ratio above the limit once past a floor, or an
//!   absolute size). A corrupt stream or a bomb ends the body with an error and records why in a
//!   [`Failure`] slot, which the count's verdict reads: such a body is never counted as certain.
//! - [`encode`]: gzip, br or zstd toward the client (`compress` on a route), chosen from the
//!   client's `Accept-Encoding` by [`negotiate`]. Trailers are not carried through an encoder
//!   (the NDJSON marker line still is, inside the compressed stream).
//!
//! The codecs are async-compression's (the ones tower-http and reqwest use): no codec here is
//! written by hand. The adapters are tokio-util's `StreamReader` / `ReaderStream`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_compression::tokio::bufread as codecs;
use async_compression::Level;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::HeaderMap;
use http_body::{Body, Frame};
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::problem::{BoxError, ProxyBody};

/// A content coding cvgate can decode (and, but for deflate, encode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// HTTP's `deflate`: the zlib format (RFC 9110 §8.4.1.2).
    Deflate,
    Br,
    Zstd,
}

impl Coding {
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }
}

/// A response's `Content-Encoding`: `Ok(None)` when absent or `identity`, `Ok(Some(c))` for one
/// coding we decode, `Err(())` for anything else (an unknown coding, several stacked codings,
/// several header lines, a non-ASCII value): such a body cannot be counted.
#[allow(clippy::result_unit_err)]
pub fn content_coding(h: &HeaderMap) -> Result<Option<Coding>, ()> {
    let mut all = h.get_all(http::header::CONTENT_ENCODING).iter();
    let Some(v) = all.next() else { return Ok(None) };
    if all.next().is_some() {
        return Err(());
    }
    let v = v.to_str().map_err(|_| ())?.trim();
    Ok(Some(match v.to_ascii_lowercase().as_str() {
        "" | "identity" => return Ok(None),
        "gzip" | "x-gzip" => Coding::Gzip,
        "deflate" => Coding::Deflate,
        "br" => Coding::Br,
        "zstd" => Coding::Zstd,
        _ => return Err(()),
    }))
}

/// The coding to encode a response in for a client whose `Accept-Encoding` is `accept`, among
/// gzip, br and zstd (server preference zstd > br > gzip at equal q); `None` for identity.
/// Follows RFC 9110 §12.5.3: q-values, `*`, and `q=0` to refuse a coding.
pub fn negotiate(accept: Option<&str>) -> Option<Coding> {
    let accept = accept?;
    let mut best: Option<(u16, Coding)> = None;
    let mut star: Option<u16> = None;
    let mut named = Vec::with_capacity(4);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .map_or(1000, |q| (q.clamp(0.0, 1.0) * 1000.0) as u16);
        let coding = match name.as_str() {
            "gzip" | "x-gzip" => Coding::Gzip,
            "br" => Coding::Br,
            "zstd" => Coding::Zstd,
            "*" => {
                star = Some(q);
                continue;
            }
            _ => continue,
        };
        named.push(coding);
        if q > 0 && best.is_none_or(|(bq, bc)| q > bq || (q == bq && rank(coding) > rank(bc))) {
            best = Some((q, coding));
        }
    }
    if best.is_none() {
        // `*` stands for every coding not named.
        if let Some(q) = star.filter(|q| *q > 0) {
            let c = [Coding::Zstd, Coding::Br, Coding::Gzip].into_iter().find(|c| !named.contains(c))?;
            best = Some((q, c));
        }
    }
    best.map(|(_, c)| c)
}

fn rank(c: Coding) -> u8 {
    match c {
        Coding::Zstd => 3,
        Coding::Br => 2,
        Coding::Gzip => 1,
        Coding::Deflate => 0,
    }
}

/// Why a decoded body was ended, written once by the decoder, read by the count's verdict.
pub type Failure = Arc<OnceLock<&'static str>>;

/// Decompression-bomb limits for one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BombGuard {
    /// Most decoded bytes per response.
    pub max_bytes: u64,
    /// Most decoded bytes per encoded byte, checked once `ratio_floor` bytes are decoded.
    pub max_ratio: u64,
    pub ratio_floor: u64,
}

impl Default for BombGuard {
    fn default() -> Self {
        Self { max_bytes: 1 << 30, max_ratio: 100, ratio_floor: 1 << 20 }
    }
}

/// zstd frames may ask for windows up to 2 GiB; 2^27 (128 MiB) is what zstd itself accepts by
/// default without an explicit opt-in, and what browsers accept.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// Decoded bytes per frame handed on.
const OUT_CHUNK: usize = 32 * 1024;

/// The plain bytes of `body`, encoded in `coding`. A corrupt stream ends with an error and
/// `failure` set to `decode-error`; a stream past `guard` ends with an error and `bomb`.
/// Trailers of the encoded body are dropped.
pub fn decode<B>(body: B, coding: Coding, guard: BombGuard, failure: Failure) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let seen = Arc::new(AtomicU64::new(0));
    let counted = seen.clone();
    let input = BodyDataStream::new(body)
        .map_ok(move |b: Bytes| {
            counted.fetch_add(b.len() as u64, Ordering::Relaxed);
            b
        })
        .map_err(|e| io::Error::other(e.into()));
    let reader = StreamReader::new(input);
    let decoder: std::pin::Pin<Box<dyn AsyncRead + Send + Sync>> = match coding {
        Coding::Gzip => {
            let mut d = codecs::GzipDecoder::new(reader);
            d.multiple_members(true); // concatenated members are one valid gzip body
            Box::pin(d)
        }
        Coding::Deflate => Box::pin(codecs::ZlibDecoder::new(reader)),
        Coding::Br => Box::pin(codecs::BrotliDecoder::new(reader)),
        Coding::Zstd => {
            let p = [async_compression::zstd::DParameter::window_log_max(ZSTD_WINDOW_LOG_MAX)];
            let mut d = codecs::ZstdDecoder::with_params(reader, &p);
            d.multiple_members(true);
            Box::pin(d)
        }
    };
    let mut out_bytes = 0u64;
    let frames = ReaderStream::with_capacity(decoder, OUT_CHUNK).map(move |r| match r {
        Ok(b) => {
            out_bytes += b.len() as u64;
            let in_bytes = seen.load(Ordering::Relaxed).max(1);
            let bomb = out_bytes > guard.max_bytes
                || (out_bytes > guard.ratio_floor && out_bytes / in_bytes > guard.max_ratio);
            if bomb {
                let _ = failure.set("bomb");
                return Err(BoxError::from("decompression limit exceeded (bomb)"));
            }
            Ok(Frame::data(b))
        }
        Err(e) => {
            let _ = failure.set("decode-error");
            Err(BoxError::from(format!("cannot decode the {} body: {e}", coding.as_str())))
        }
    });
    // After an error the stream would be polled again by nobody: the body ends there.
    BodyExt::boxed(StreamBody::new(frames))
}

/// `body` encoded in `coding` (gzip, br or zstd) for the client. Deflate is never chosen by
/// [`negotiate`] and is encoded as gzip's sibling zlib if asked.
pub fn encode(body: ProxyBody, coding: Coding) -> ProxyBody {
    let input = BodyDataStream::new(body).map_err(io::Error::other);
    let reader = StreamReader::new(input);
    // The fastest level of each (nginx's `gzip_comp_level` defaults to 1 for the same reason):
    // on a 20-CV page gzip 6 took 43 µs, gzip 1 15 µs; brotli 4 57 µs, brotli 1 18 µs; zstd 3
    // 39 µs, zstd 1 22 µs (benches/codec.rs, docs/BENCHMARKS.md). CV JSON still shrinks ~4x.
    let encoder: std::pin::Pin<Box<dyn AsyncRead + Send + Sync>> = match coding {
        Coding::Gzip => Box::pin(codecs::GzipEncoder::with_quality(reader, Level::Fastest)),
        Coding::Deflate => Box::pin(codecs::ZlibEncoder::with_quality(reader, Level::Fastest)),
        Coding::Br => Box::pin(codecs::BrotliEncoder::with_quality(reader, Level::Precise(1))),
        Coding::Zstd => Box::pin(codecs::ZstdEncoder::with_quality(reader, Level::Fastest)),
    };
    let frames = ReaderStream::with_capacity(encoder, OUT_CHUNK).map(|r| r.map(Frame::data).map_err(BoxError::from));
    BodyExt::boxed(StreamBody::new(frames))
}

/// Compress `plain` in one go (the mock API and tests; the proxy streams with [`encode`]).
pub async fn compress(plain: Bytes, coding: Coding) -> Bytes {
    let body = http_body_util::Full::new(plain).map_err(|never| match never {}).boxed();
    encode(body, coding).collect().await.map(|c| c.to_bytes()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::count::{RecordCounter, RecordFormat};

    #[test]
    fn accept_encoding_is_negotiated_with_q_values() {
        assert_eq!(negotiate(None), None);
        assert_eq!(negotiate(Some("gzip")), Some(Coding::Gzip));
        assert_eq!(negotiate(Some("gzip, deflate, br")), Some(Coding::Br));
        assert_eq!(negotiate(Some("gzip, br, zstd")), Some(Coding::Zstd));
        assert_eq!(negotiate(Some("br;q=0.5, gzip;q=0.9")), Some(Coding::Gzip));
        assert_eq!(negotiate(Some("gzip;q=0")), None);
        assert_eq!(negotiate(Some("identity")), None);
        assert_eq!(negotiate(Some("*")), Some(Coding::Zstd));
        assert_eq!(negotiate(Some("zstd;q=0, br;q=0, *")), Some(Coding::Gzip));
        assert_eq!(negotiate(Some("deflate")), None);
    }

    #[test]
    fn content_encoding_is_known_or_refused() {
        let h = |v: &[&str]| {
            let mut m = HeaderMap::new();
            for x in v {
                m.append(http::header::CONTENT_ENCODING, x.parse().unwrap());
            }
            content_coding(&m)
        };
        assert_eq!(h(&[]), Ok(None));
        assert_eq!(h(&["identity"]), Ok(None));
        assert_eq!(h(&["GZIP"]), Ok(Some(Coding::Gzip)));
        assert_eq!(h(&["x-gzip"]), Ok(Some(Coding::Gzip)));
        assert_eq!(h(&["zstd"]), Ok(Some(Coding::Zstd)));
        assert_eq!(h(&["gzip, br"]), Err(()));
        assert_eq!(h(&["gzip", "br"]), Err(()));
        assert_eq!(h(&["compress"]), Err(()));
    }

    #[tokio::test]
    async fn every_coding_round_trips() {
        let plain = Bytes::from("{\"results\":[1,2,3]}\n".repeat(5000));
        for c in [Coding::Gzip, Coding::Deflate, Coding::Br, Coding::Zstd] {
            let packed = compress(plain.clone(), c).await;
            assert!(packed.len() < plain.len() / 10, "{c:?} compresses");
            let failure = Failure::default();
            let body = http_body_util::Full::new(packed);
            let out = decode(body, c, BombGuard::default(), failure.clone()).collect().await.unwrap().to_bytes();
            assert_eq!(out, plain, "{c:?}");
            assert!(failure.get().is_none());
        }
    }

    /// Counts the records of `body` (split at `splits`, encoded in `coding` when set) as the
    /// proxy does: decoded frame by frame, fed to the counter as the frames come.
    fn count_through(body: Bytes, coding: Option<Coding>, splits: &[usize], format: &RecordFormat) -> u64 {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let wire = match coding {
                Some(c) => compress(body, c).await,
                None => body,
            };
            let mut bounds: Vec<usize> = splits.iter().map(|s| s % (wire.len() + 1)).collect();
            bounds.sort_unstable();
            bounds.push(wire.len());
            let mut at = 0;
            let chunks: Vec<Result<Frame<Bytes>, BoxError>> = bounds
                .into_iter()
                .map(|end| {
                    let c = wire.slice(at..end);
                    at = end;
                    Ok(Frame::data(c))
                })
                .collect();
            let body = StreamBody::new(futures_util::stream::iter(chunks));
            let mut decoded = match coding {
                Some(c) => decode(body, c, BombGuard::default(), Failure::default()),
                None => BodyExt::boxed(body),
            };
            let mut counter = RecordCounter::new(format.clone());
            while let Some(frame) = decoded.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    counter.feed(&data, None);
                }
            }
            counter.finish()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Issue 15: for any split of any compressed body into chunks, the count after decoding
        /// equals the count of the plain body. (The CVs come from the mock API: `devtools`.)
        #[cfg(feature = "devtools")]
        #[test]
        fn any_split_of_any_compressed_body_counts_like_the_plain_body(
            ids in proptest::collection::vec(1u64..1_000_000, 0..40),
            coding in 0usize..4,
            splits in proptest::collection::vec(0usize..100_000, 0..12),
            ndjson in proptest::bool::ANY,
        ) {
            let coding = [Coding::Gzip, Coding::Deflate, Coding::Br, Coding::Zstd][coding];
            let mut plain = String::new();
            let format = if ndjson {
                for id in &ids {
                    crate::devtools::mock_api::write_cv(&mut plain, *id);
                    plain.push('\n');
                }
                RecordFormat::Ndjson
            } else {
                plain.push_str("{\"page\":1,\"results\":[");
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        plain.push(',');
                    }
                    crate::devtools::mock_api::write_cv(&mut plain, *id);
                }
                plain.push_str("]}");
                RecordFormat::JsonArrayField("results".into())
            };
            let plain = Bytes::from(plain);
            let want = count_through(plain.clone(), None, &[], &format);
            proptest::prop_assert_eq!(want, ids.len() as u64);
            proptest::prop_assert_eq!(count_through(plain, Some(coding), &splits, &format), want);
        }
    }

    #[cfg(feature = "devtools")]
    #[tokio::test]
    async fn a_cv_page_shrinks_at_the_fastest_levels() {
        let mut page = String::from("{\"results\":[");
        for id in 1..=20 {
            if id > 1 {
                page.push(',');
            }
            crate::devtools::mock_api::write_cv(&mut page, id * 7919);
        }
        page.push_str("]}");
        for c in [Coding::Gzip, Coding::Br, Coding::Zstd] {
            let packed = compress(Bytes::from(page.clone()), c).await;
            eprintln!("{c:?}: {} -> {} bytes", page.len(), packed.len());
            assert!(packed.len() * 3 < page.len(), "{c:?}: {} of {}", packed.len(), page.len());
        }
    }

    #[tokio::test]
    async fn a_bomb_and_a_corrupt_stream_end_with_their_reason() {
        let zeros = Bytes::from(vec![0u8; 8 << 20]);
        let packed = compress(zeros, Coding::Gzip).await;
        let failure = Failure::default();
        let body = http_body_util::Full::new(packed);
        assert!(decode(body, Coding::Gzip, BombGuard::default(), failure.clone()).collect().await.is_err());
        assert_eq!(failure.get(), Some(&"bomb"));

        let failure = Failure::default();
        let body = http_body_util::Full::new(Bytes::from_static(b"\x1f\x8b\x08\x00garbage"));
        assert!(decode(body, Coding::Gzip, BombGuard::default(), failure.clone()).collect().await.is_err());
        assert_eq!(failure.get(), Some(&"decode-error"));
    }
}

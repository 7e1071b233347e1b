//! The masking step of a response body: a body wrapper that feeds every data frame through a
//! [`Masker`] and passes on what it writes. It sits after decoding and before counting
//! (decode → mask → count/cut → encode), so the counter counts what the client gets: a record
//! the masker drops (too large, not an object) is neither delivered nor charged, and a body the
//! masker cannot read (wrong shape) ends in an error, which the counter reports as uncertain
//! (charged in full). What it did is added up in a [`MaskTally`] the settle step reads at the
//! end; the masker has finished before the counter sees the end of the stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::mask::{MaskError, MaskStats, Masker};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the masker of one answer did, read when the answer ends.
#[derive(Debug, Default)]
pub struct MaskTally {
    /// Records whose contact data was removed (or would have been, in shadow mode).
    pub masked: AtomicU64,
    /// Records dropped whole (too large, not a JSON object).
    pub dropped: AtomicU64,
    /// Records passed whole within a soft budget's allowance.
    pub allowed: AtomicU64,
    /// The body could not be read as records (`shape`, `too-large`, `malformed`); 0 = none.
    failed: AtomicU64,
}

impl MaskTally {
    fn record(&self, s: &MaskStats) {
        self.masked.store(s.records_masked, Ordering::Relaxed);
        self.dropped.store(s.records_dropped(), Ordering::Relaxed);
        self.allowed.store(s.records_allowed, Ordering::Relaxed);
    }

    /// Why the masker gave up on the body, if it did.
    pub fn failure(&self) -> Option<&'static str> {
        match self.failed.load(Ordering::Relaxed) {
            0 => None,
            1 => Some("shape"),
            2 => Some("too-large"),
            _ => Some("malformed"),
        }
    }

    fn fail(&self, e: &MaskError) {
        let code = match e.label() {
            "shape" => 1,
            "too-large" => 2,
            _ => 3,
        };
        self.failed.store(code, Ordering::Relaxed);
    }
}

pin_project! {
    /// `inner`'s records, masked. Trailers wait until the masker has written its last bytes.
    pub struct MaskedBody<B> {
        #[pin]
        inner: B,
        masker: Masker,
        out: BytesMut,
        tally: Arc<MaskTally>,
        trailers: Option<http::HeaderMap>,
        done: bool,
    }
}

impl<B> MaskedBody<B> {
    pub fn new(inner: B, masker: Masker, tally: Arc<MaskTally>) -> Self {
        MaskedBody { inner, masker, out: BytesMut::new(), tally, trailers: None, done: false }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the answer could not be masked: {0}")]
struct Unmaskable(MaskError);

impl<B> Body for MaskedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    *this.done = true;
                    this.tally.record(this.masker.stats());
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => {
                    *this.done = true;
                    let r = this.masker.finish(this.out);
                    this.tally.record(this.masker.stats());
                    if let Err(e) = r {
                        this.tally.fail(&e);
                        return Poll::Ready(Some(Err(Box::new(Unmaskable(e)))));
                    }
                    if this.out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    if let Err(e) = this.masker.feed(&data, this.out) {
                        *this.done = true;
                        this.tally.record(this.masker.stats());
                        this.tally.fail(&e);
                        return Poll::Ready(Some(Err(Box::new(Unmaskable(e)))));
                    }
                    if !this.out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        this.trailers.get_or_insert_with(http::HeaderMap::new).extend(t);
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default() // masking changes the length
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::count::mask::{KeepIf, MaskFormat, MaskPlan, MaskSpec};
    use http_body_util::{BodyExt, StreamBody};

    fn plan() -> Arc<MaskPlan> {
        let spec = MaskSpec {
            remove: vec!["naam".into(), "email".into()],
            keep_if: vec![KeepIf { field: "telefoon".into(), when: "toon_telefoon".into(), equals: true.into() }],
            case_insensitive: true,
            ..MaskSpec::default()
        };
        Arc::new(MaskPlan::new(&spec).unwrap())
    }

    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>;

    fn body(chunks: &[&'static str]) -> StreamBody<Frames> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            chunks.iter().map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))).collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn frames_are_masked_and_the_tally_adds_up() {
        let tally = Arc::new(MaskTally::default());
        let chunks = [
            "{\"id\":1,\"naam\":\"A\",\"tel",
            "efoon\":\"06\",\"toon_telefoon\":false}\n{\"id\":2}\n{\"id\":3,\"EMAIL\":\"x\"}",
        ];
        let b = MaskedBody::new(body(&chunks), Masker::new(plan(), MaskFormat::Ndjson), tally.clone());
        let out = b.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"{\"id\":1,\"toon_telefoon\":false}\n{\"id\":2}\n{\"id\":3}");
        assert_eq!(tally.masked.load(Ordering::Relaxed), 2);
        assert_eq!(tally.failure(), None);
    }

    #[tokio::test]
    async fn a_body_of_the_wrong_shape_ends_in_an_error() {
        let tally = Arc::new(MaskTally::default());
        let fmt = MaskFormat::JsonArrayField("results".into());
        let b = MaskedBody::new(body(&["[{\"naam\":\"A\"}]"]), Masker::new(plan(), fmt), tally.clone());
        assert!(b.collect().await.is_err());
        assert_eq!(tally.failure(), Some("shape"));
    }
}

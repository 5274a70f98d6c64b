//! A request body that keeps what the handler reads of it: the audit log names a refused create
//! from its body, and records bodies at `Request` and above, without reading the body ahead of
//! the handler and handing it on again. The frames are kept as they pass (`Bytes` clones), up to
//! the body limit the handlers enforce.
use crate::http::limits::MAX_BODY_BYTES;
use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

/// What the handler read; [`Seen::take`] once the response is made.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Frames>>);

#[derive(Default)]
struct Frames {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Seen {
    /// `body`, keeping what is read of it here.
    pub fn wrap(&self, body: Body) -> Body {
        Body::new(Recorded {
            inner: body,
            seen: self.clone(),
        })
    }

    /// The body as read, in one piece; `None` if nothing was read or it was past the limit.
    pub fn take(&self) -> Option<Bytes> {
        let frames = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        match frames.chunks.len() {
            0 => None,
            1 => frames.chunks.into_iter().next(),
            _ => Some(frames.chunks.concat().into()),
        }
        .filter(|_| frames.len <= MAX_BODY_BYTES)
    }
}

struct Recorded {
    inner: Body,
    seen: Seen,
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
            let mut frames = self.seen.0.lock().unwrap_or_else(PoisonError::into_inner);
            frames.len = frames.len.saturating_add(data.len());
            if frames.len <= MAX_BODY_BYTES {
                frames.chunks.push(data.clone());
            } else {
                frames.chunks = Vec::new();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_the_handler_reads_is_kept_in_one_piece() {
        let seen = Seen::default();
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from("{\"a\":")), Ok(Bytes::from("1}"))];
        let body = seen.wrap(Body::from_stream(futures::stream::iter(chunks)));
        assert_eq!(seen.take(), None, "nothing read yet");
        let read = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(read, "{\"a\":1}");
        assert_eq!(seen.take().unwrap(), "{\"a\":1}");
    }
}

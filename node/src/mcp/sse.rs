//! Server-sent events, incrementally: bytes in, complete events out, so a stream is forwarded
//! event by event (never buffered whole) and each event can be inspected on the way.

use bytes::{Bytes, BytesMut};

/// Splits a byte stream into SSE events (each including its terminating blank line).
#[derive(Default)]
pub struct EventSplitter {
    buf: BytesMut,
}

/// Largest single event accepted from an upstream (bounded buffers).
pub const MAX_EVENT: usize = 16 << 20;

/// An SSE event exceeded [`MAX_EVENT`].
#[derive(Debug, thiserror::Error)]
#[error("an SSE event from the upstream exceeded {MAX_EVENT} bytes")]
pub struct EventTooLarge;

impl EventSplitter {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, EventTooLarge> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = find_boundary(&self.buf) {
            out.push(self.buf.split_to(end).freeze());
        }
        if self.buf.len() > MAX_EVENT {
            return Err(EventTooLarge);
        }
        Ok(out)
    }

    /// What is left (an unterminated last event) when the stream ends.
    pub fn finish(self) -> Option<Bytes> {
        (!self.buf.iter().all(|b| b.is_ascii_whitespace())).then(|| self.buf.freeze())
    }
}

/// An event's data parsed as JSON (`None` for comments, empty events and non-JSON data).
pub fn json(event: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_str(&data(event)?).ok()
}

/// The events of an SSE body, one item each, until the body ends or fails (an error ends the
/// stream; nothing after it is yielded).
pub fn events<S, E>(body: S) -> impl futures::Stream<Item = Bytes> + Send + 'static
where
    S: futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    let state = (Box::pin(body), Some(EventSplitter::default()), std::collections::VecDeque::new());
    futures::stream::unfold(state, |(mut body, mut split, mut ready)| async move {
        loop {
            if let Some(ev) = ready.pop_front() {
                return Some((ev, (body, split, ready)));
            }
            let splitter = split.as_mut()?;
            match body.next().await {
                Some(Ok(chunk)) => match splitter.push(&chunk) {
                    Ok(evs) => ready.extend(evs),
                    Err(_) => split = None,
                },
                Some(Err(_)) => split = None,
                None => ready.extend(split.take().and_then(EventSplitter::finish)),
            }
        }
    })
}

/// Index just past the first blank line (`\n\n`, `\r\n\r\n` or `\r\r`).
fn find_boundary(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'\n', b'\n') | (b'\r', b'\r') => return Some(i + 2),
            (b'\r', b'\n') if b.get(i + 2..i + 4) == Some(b"\r\n") => return Some(i + 4),
            _ => i += 1,
        }
    }
    None
}

/// The `data:` lines of an event, joined with newlines (the JSON-RPC message it carries).
pub fn data(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut parts = Vec::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            parts.push(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    (!parts.is_empty()).then(|| parts.join("\n"))
}

/// One SSE event carrying a JSON-RPC message.
pub fn message_event(json: &str) -> Bytes {
    Bytes::from(format!("event: message\ndata: {json}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_of_a_body_one_by_one_across_chunks_until_it_fails() {
        use futures::StreamExt;
        let chunks: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from_static(b"data: 1\n\nda")),
            Ok(Bytes::from_static(b"ta: 2\n\n")),
            Err("reset".into()),
            Ok(Bytes::from_static(b"data: 3\n\n")),
        ];
        let got: Vec<Bytes> = events(futures::stream::iter(chunks)).collect().await;
        assert_eq!(got, vec![Bytes::from_static(b"data: 1\n\n"), Bytes::from_static(b"data: 2\n\n")]);
        let tail: Vec<Bytes> =
            events(futures::stream::iter(vec![Ok::<_, String>(Bytes::from_static(b"data: 4"))])).collect().await;
        assert_eq!(tail, vec![Bytes::from_static(b"data: 4")], "an unterminated last event still counts");
    }

    #[test]
    fn splits_across_chunks() {
        let mut s = EventSplitter::default();
        assert!(s.push(b"event: message\ndata: {\"a\"").unwrap().is_empty());
        let ev = s.push(b":1}\n\nid: 2\ndata: x\r\n\r\ndata: y").unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(data(&ev[0]).as_deref(), Some("{\"a\":1}"));
        assert_eq!(data(&ev[1]).as_deref(), Some("x"));
        assert_eq!(s.finish().as_deref(), Some(&b"data: y"[..]));
    }

    #[test]
    fn multi_line_data_and_comments() {
        assert_eq!(data(b": keep-alive\n\n"), None);
        assert_eq!(data(b"data: a\ndata: b\n\n").as_deref(), Some("a\nb"));
    }
}

//! Server-sent events, incrementally: bytes in, complete events out, so a stream is forwarded
//! event by event (never buffered whole) and each event can be inspected on the way.

use bytes::{Bytes, BytesMut};

/// Splits a byte stream into SSE events (each including its terminating blank line). Linear:
/// each byte is examined about once, however the stream is chunked.
#[derive(Default)]
pub struct EventSplitter {
    buf: BytesMut,
    /// Where scanning resumes in `buf` (bytes before it hold no event boundary).
    scanned: usize,
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
        loop {
            match find_boundary(&self.buf, self.scanned) {
                Ok(end) => {
                    out.push(self.buf.split_to(end).freeze());
                    self.scanned = 0;
                }
                Err(resume) => {
                    self.scanned = resume;
                    break;
                }
            }
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

/// Length of the line terminator at `i` (CRLF, LF or CR); `None` when a CR ends the buffer
/// (a LF may follow in the next chunk).
fn terminator(b: &[u8], i: usize) -> Option<usize> {
    match b[i] {
        b'\n' => Some(1),
        _ => match b.get(i + 1) {
            Some(b'\n') => Some(2),
            Some(_) => Some(1),
            None => None,
        },
    }
}

/// The end of the first event in `b` (a line terminator followed by another: a blank line),
/// scanning from `from`; else where to resume scanning once more bytes arrived.
fn find_boundary(b: &[u8], from: usize) -> Result<usize, usize> {
    let mut i = from;
    while let Some(p) = b[i..].iter().position(|c| *c == b'\n' || *c == b'\r') {
        i += p;
        let Some(first) = terminator(b, i) else { return Err(i) };
        let j = i + first;
        match b.get(j) {
            None => return Err(i),
            Some(b'\n') => return Ok(j + 1),
            Some(b'\r') => match terminator(b, j) {
                Some(second) => return Ok(j + second),
                None => return Err(i),
            },
            Some(_) => i = j,
        }
    }
    Err(b.len())
}

/// Whether a message on its way to the agent is an SSE event (else it is a JSON body).
pub fn is_event(message: &[u8]) -> bool {
    message.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
}

/// The JSON-RPC text a message on its way to the agent carries: an event's data, or the body.
pub fn message_text(message: &[u8]) -> Option<String> {
    if is_event(message) {
        data(message)
    } else {
        std::str::from_utf8(message).ok().map(str::to_string)
    }
}

/// `message` carrying `json` instead, framed as it was (an event keeps its other lines).
pub fn with_message(message: &[u8], json: String) -> Bytes {
    if is_event(message) {
        with_data(message, &json)
    } else {
        Bytes::from(json)
    }
}

/// The `data:` lines of an event, joined with newlines (the JSON-RPC message it carries).
pub fn data(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut parts = Vec::new();
    for line in text.split(['\n', '\r']) {
        if let Some(d) = line.strip_prefix("data:") {
            parts.push(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    (!parts.is_empty()).then(|| parts.join("\n"))
}

/// The same event with its data replaced by `json` (its `id:`, `event:` and `retry:` lines kept).
pub fn with_data(event: &[u8], json: &str) -> Bytes {
    let text = String::from_utf8_lossy(event);
    let mut out = String::with_capacity(text.len() + json.len());
    let mut placed = false;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.starts_with("data:") {
            if !placed {
                out.push_str("data: ");
                out.push_str(json);
                out.push('\n');
                placed = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    Bytes::from(out)
}

/// One SSE event carrying a JSON-RPC message.
pub fn message_event(json: &str) -> Bytes {
    Bytes::from(format!("event: message\ndata: {json}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_data_replaces_the_data_and_keeps_the_id() {
        let e = with_data(b"id: 7\nevent: message\ndata: {\"a\":\ndata: 1}\n\n", r#"{"a":2}"#);
        assert_eq!(&e[..], b"id: 7\nevent: message\ndata: {\"a\":2}\n\n");
        assert_eq!(data(&e).as_deref(), Some(r#"{"a":2}"#));
    }

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
    fn every_blank_line_ends_an_event_however_it_is_chunked() {
        let stream = b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\n\r\ndata: e\r\n\ndata: f\n\r";
        let want = ["a", "b", "c", "d", "e"];
        for size in 1..=stream.len() {
            let mut s = EventSplitter::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(size) {
                got.extend(s.push(chunk).unwrap());
            }
            let datas: Vec<String> = got.iter().filter_map(|e| data(e)).collect();
            assert_eq!(datas, want, "chunks of {size}");
            assert_eq!(s.finish().as_deref().and_then(data).as_deref(), Some("f"), "chunks of {size}");
        }
    }

    #[test]
    fn a_large_event_in_small_chunks_is_split_in_linear_time() {
        // 4 MB in 1 KB chunks: a rescan from the start on every chunk would take ~8 G steps.
        let mut s = EventSplitter::default();
        let line = vec![b'x'; 1024];
        s.push(b"data: ").unwrap();
        for _ in 0..4096 {
            assert!(s.push(&line).unwrap().is_empty());
        }
        let ev = s.push(b"\n\n").unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].len(), 6 + 4096 * 1024 + 2);
    }

    #[test]
    fn multi_line_data_and_comments() {
        assert_eq!(data(b": keep-alive\n\n"), None);
        assert_eq!(data(b"data: a\ndata: b\n\n").as_deref(), Some("a\nb"));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Whatever the bytes and however they are chunked, splitting never panics, and the
            /// events plus what is left add up to the input.
            #[test]
            fn any_bytes_any_chunks(bytes in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'd'), Just(b':'), any::<u8>()], 0..400), cut in 1usize..40) {
                let mut s = EventSplitter::default();
                let mut out = Vec::new();
                for chunk in bytes.chunks(cut) {
                    out.extend(s.push(chunk).unwrap().into_iter().flat_map(|e| e.to_vec()));
                }
                let rest = s.buf.to_vec();
                out.extend(rest);
                prop_assert_eq!(out, bytes);
            }

            /// Events made of data lines split back into exactly those events, in any chunking.
            #[test]
            fn framed_events_round_trip(datas in prop::collection::vec("[a-z0-9 {}\":]{0,30}", 1..8), sep in prop_oneof![Just("\n\n"), Just("\r\n\r\n"), Just("\r\r"), Just("\n\r\n")], cut in 1usize..25) {
                let stream: String = datas.iter().map(|d| format!("data: {d}{sep}")).collect();
                let mut s = EventSplitter::default();
                let mut got = Vec::new();
                for chunk in stream.as_bytes().chunks(cut) {
                    got.extend(s.push(chunk).unwrap());
                }
                got.extend(s.finish());
                let back: Vec<String> = got.iter().map(|e| data(e).unwrap_or_default()).collect();
                prop_assert_eq!(back, datas);
            }
        }
    }
}

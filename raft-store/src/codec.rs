//! Value encoding for everything on disk and in snapshots: one format-version byte, then postcard.
//! A value with an unknown version is a storage error, never a silent misread.

use serde::{de::DeserializeOwned, Serialize};

/// Current on-disk format.
pub const FORMAT_VERSION: u8 = 1;

/// Encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value is not in a format this build reads.
    #[error("unsupported on-disk format version {0} (this build reads {FORMAT_VERSION})")]
    Version(u8),
    /// The value is empty.
    #[error("empty value")]
    Empty,
    /// postcard failed.
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
}

/// Encodes a value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    postcard::to_io(value, &mut out).map_err(CodecError::Postcard)?;
    Ok(out)
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_VERSION, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&v, _)) => Err(CodecError::Version(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::command::{Command, Request};
    use crate::model::resource::{Endpoint, McpServerSpec};

    #[test]
    fn round_trip_and_version_check() {
        let req = Request {
            actor: "a".into(),
            at_ms: 7,
            command: Command::UpsertServer {
                name: "g".into(),
                labels: [("env".to_string(), "prod".to_string())].into(),
                spec: McpServerSpec { endpoint: Some(Endpoint { url: "https://x/".into() }), ..Default::default() },
            },
        };
        let bytes = encode(&req).unwrap();
        assert_eq!(decode::<Request>(&bytes).unwrap(), req);
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(matches!(decode::<Request>(&other), Err(CodecError::Version(9))));
        assert!(matches!(decode::<Request>(&[]), Err(CodecError::Empty)));
    }
}

//! Message bodies on SQS and SNS, which carry text only (XML characters, at least one): a body
//! that is such text travels as it is; any other body (binary, empty) travels base64-encoded
//! with the attribute [`ENCODING_ATTRIBUTE`] saying so, and is decoded on receipt.

use bytes::Bytes;
use nimbus_core::queue::{Attributes, MAX_ATTRIBUTES};
use nimbus_core::{Error, Result};

/// The attribute that marks an encoded body; the engine adds and removes it.
pub const ENCODING_ATTRIBUTE: &str = "nimbus.body";
const BASE64: &str = "base64";

/// A body ready for the wire, with the attributes to send beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireBody {
    /// The text to send.
    pub text: String,
    /// The caller's attributes, plus [`ENCODING_ATTRIBUTE`] when the body is encoded.
    pub attributes: Attributes,
}

/// Whether SQS accepts `c` in a body (the XML 1.0 character set).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{a}' | '\u{d}' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
}

/// Prepares `body` and `attributes` for SQS or SNS.
pub fn encode(body: &Bytes, mut attributes: Attributes) -> Result<WireBody> {
    if attributes.contains_key(ENCODING_ATTRIBUTE) {
        return Err(Error::invalid(format!(
            "attribute `{ENCODING_ATTRIBUTE}` is reserved by the AWS engine"
        )));
    }
    if let Ok(text) = std::str::from_utf8(body) {
        if !text.is_empty() && text.chars().all(is_xml_char) {
            return Ok(WireBody {
                text: text.to_string(),
                attributes,
            });
        }
    }
    if attributes.len() >= MAX_ATTRIBUTES {
        return Err(Error::invalid(format!(
            "a binary or empty body needs one attribute of the {MAX_ATTRIBUTES} SQS allows; this message has {}",
            attributes.len()
        )));
    }
    attributes.insert(ENCODING_ATTRIBUTE.to_string(), BASE64.to_string());
    Ok(WireBody {
        // The leading `b` keeps the text non-empty: an empty body encodes to "", which SQS refuses.
        text: format!("b{}", base64_encode(body)),
        attributes,
    })
}

/// Turns a received body and its attributes back into what was sent.
pub fn decode(text: String, mut attributes: Attributes) -> Result<(Bytes, Attributes)> {
    match attributes.remove(ENCODING_ATTRIBUTE).as_deref() {
        None => Ok((Bytes::from(text), attributes)),
        Some(BASE64) => {
            let encoded = text.strip_prefix('b').unwrap_or(&text);
            let body = base64_decode(encoded).ok_or_else(|| {
                Error::internal("a message marked base64 does not decode as base64")
            })?;
            Ok((Bytes::from(body), attributes))
        }
        Some(other) => Err(Error::internal(format!(
            "a message has an unknown body encoding `{other}`"
        ))),
    }
}

fn base64_encode(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(data)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    aws_smithy_types::base64::decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: &[u8]) {
        let attrs = Attributes::from([("k".to_string(), "v".to_string())]);
        let wire = encode(&Bytes::copy_from_slice(body), attrs.clone()).unwrap();
        assert!(!wire.text.is_empty());
        assert!(wire.text.chars().all(is_xml_char));
        let (back, back_attrs) = decode(wire.text, wire.attributes).unwrap();
        assert_eq!(back.as_ref(), body);
        assert_eq!(back_attrs, attrs);
    }

    #[test]
    fn text_travels_plain_and_everything_else_round_trips() {
        let plain = encode(&Bytes::from("{\"a\":1}"), Attributes::new()).unwrap();
        assert_eq!(plain.text, "{\"a\":1}");
        assert!(plain.attributes.is_empty());
        for body in [
            &b""[..],
            b"text",
            b"\x00\x01\xff",
            "ünïcode".as_bytes(),
            b"a\x0bb",
        ] {
            round_trip(body);
        }
    }

    #[test]
    fn the_marker_is_reserved_and_counted() {
        let reserved = Attributes::from([(ENCODING_ATTRIBUTE.to_string(), "x".to_string())]);
        assert!(encode(&Bytes::from("x"), reserved).is_err());
        let full: Attributes = (0..MAX_ATTRIBUTES)
            .map(|i| (format!("a{i}"), "v".to_string()))
            .collect();
        assert!(encode(&Bytes::from("text"), full.clone()).is_ok());
        let err = encode(&Bytes::new(), full).unwrap_err();
        assert!(err.to_string().contains("binary or empty body"), "{err}");
    }
}

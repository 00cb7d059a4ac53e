//! ALB's path patterns: case-sensitive, matched against the whole path (never the query), `*`
//! for any run of characters (`/` included) and `?` for exactly one; up to 128 characters.

use crate::config::ConfigError;

/// The longest pattern ALB accepts.
pub const MAX_PATTERN: usize = 128;

/// A checked path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern(String);

impl PathPattern {
    /// Checks `pattern`: 1 to 128 printable ASCII characters without spaces.
    pub fn parse(pattern: &str) -> Result<Self, ConfigError> {
        let why = if pattern.is_empty() {
            Some("is empty")
        } else if pattern.len() > MAX_PATTERN {
            Some("is longer than 128 characters")
        } else if !pattern.bytes().all(|b| b.is_ascii_graphic()) {
            Some("holds a space, a control character or a non-ASCII character")
        } else {
            None
        };
        match why {
            Some(why) => Err(ConfigError::Invalid(format!(
                "path pattern `{pattern}` {why}"
            ))),
            None => Ok(Self(pattern.to_string())),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `path` matches the whole pattern.
    pub fn matches(&self, path: &str) -> bool {
        glob_match(self.0.as_bytes(), path.as_bytes())
    }
}

/// Wildcard matching in linear space: on a mismatch, the last `*` takes one more byte.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                last_star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match last_star {
                Some((star, taken)) => {
                    p = star + 1;
                    t = taken + 1;
                    last_star = Some((star, taken + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alb_patterns_match_as_alb_documents_them() {
        let table = [
            ("/cluster1", "/cluster1", true),
            ("/cluster1", "/cluster1/", false),
            ("/cluster1*", "/cluster1/a/b", true),
            ("/cluster1*", "/cluster1", true),
            ("/cluster1*", "/Cluster1", false),
            ("/img/*.png", "/img/a/b.png", true),
            ("/img/*.png", "/img/a/b.jpg", false),
            ("/v?/items", "/v1/items", true),
            ("/v?/items", "/v10/items", false),
            ("*", "/", true),
            ("/*a*b*c", "/xaxbxc", true),
            ("/*a*b*c", "/xaxbx", false),
            (
                "/a*a*a*a*b",
                "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
        ];
        for (pattern, path, expected) in table {
            let p = PathPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(path), expected, "{pattern} against {path}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "/a b", "/\u{e9}", &"/x".repeat(65)] {
            assert!(PathPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}

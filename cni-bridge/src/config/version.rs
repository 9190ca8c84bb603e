//! CNI spec versions: which ones podnet speaks, and comparing "X.Y.Z" strings.

use crate::error::{codes, CniError, Result};

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest spec version podnet implements.
pub const LATEST_VERSION: &str = "1.1.0";

pub fn is_supported_version(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// "X.Y.Z" as numbers; `None` when it is not of that form.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.');
    let mut num = || -> Option<u64> {
        let s = it.next()?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let ver = (num()?, num()?, num()?);
    if it.next().is_some() {
        return None;
    }
    Some(ver)
}

/// `v >= min`, both "X.Y.Z" (e.g. CHECK needs a config >= 0.4.0, GC and STATUS >= 1.1.0).
/// An unparseable version is a code-6 error, as in skel.
pub fn version_at_least(v: &str, min: &str) -> Result<bool> {
    let a =
        parse_version(v).ok_or_else(|| CniError::new(codes::DECODE_FAILURE, format!("invalid CNI version {v:?}")))?;
    let b = parse_version(min)
        .ok_or_else(|| CniError::new(codes::DECODE_FAILURE, format!("invalid CNI version {min:?}")))?;
    Ok(a >= b)
}

pub(super) fn unsupported_version(v: &str) -> CniError {
    CniError::new(codes::INCOMPATIBLE_VERSION, format!("incompatible CNI versions: config is {v:?}"))
        .with_details(format!("podnet supports {}", SUPPORTED_VERSIONS.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_at_least("1.1.0", "1.1.0").unwrap());
        assert!(version_at_least("1.0.0", "0.4.0").unwrap());
        assert!(!version_at_least("0.3.1", "0.4.0").unwrap());
        assert!(version_at_least("0.10.0", "0.4.0").unwrap());
        assert_eq!(version_at_least("1.0", "0.4.0").unwrap_err().code, 6);
        assert_eq!(parse_version("1.2.3"), Some((1, 2, 3)));
        assert_eq!(parse_version("1.2.3.4"), None);
        assert_eq!(parse_version("1.x.3"), None);
        assert!(is_supported_version("0.3.0") && !is_supported_version("0.2.0"));
    }
}

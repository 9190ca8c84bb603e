//! Reading fields of JSON objects, with errors that name the field's full path.

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::error::{codes, CniError, Result};

/// Reads fields of one JSON object and builds errors that name the full field path
/// (`runtimeConfig.portMappings[0].hostPort`). Config errors are code 7, result errors code 6.
///
/// The key rule, the one every object of a plugin's config or of a result is read with
/// (the plugin's own settings, `runtimeConfig`, `ipam`, `dns`, `args`, `prevResult`): that
/// of Go's `encoding/json` decoding into a struct, as the reference plugins do. A key
/// matches ASCII case-insensitively, so containerd's Go-style `HostPort`/`ContainerPort`
/// reach portmap and `"MTU"` is the bridge's `mtu`; a `null` value counts as absent. When an
/// object spells one key twice in different cases, the exact spelling wins (Go would take
/// the last in the text, which a parsed map no longer knows). [`Fields::exact`] is for the
/// objects libcni reads as a Go map rather than a struct, where keys match exactly: the
/// conflist's own top level.
#[derive(Clone)]
pub(crate) struct Fields<'a> {
    pub map: &'a Map<String, Value>,
    prefix: String,
    code: u32,
    fold: bool,
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Fields<'a> {
    /// A plugin-level config object: Go-style case-insensitive keys, code-7 errors.
    pub fn config(map: &'a Map<String, Value>) -> Self {
        Fields { map, prefix: String::new(), code: codes::INVALID_CONFIG, fold: true }
    }

    /// A CNI result object: case-insensitive keys, code-6 errors.
    pub fn result(map: &'a Map<String, Value>) -> Self {
        Fields { map, prefix: String::new(), code: codes::DECODE_FAILURE, fold: true }
    }

    /// Matches keys exactly (libcni's reading of the conflist's top level).
    pub fn exact(mut self) -> Self {
        self.fold = false;
        self
    }

    /// Field names in errors get `prefix` in front ("plugins[0]").
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The full path of `key` ("[3]" keys are appended without a dot).
    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else if key.starts_with('[') {
            format!("{}{key}", self.prefix)
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub fn err(&self, key: &str, why: impl std::fmt::Display) -> CniError {
        let field = self.path(key);
        if self.code == codes::INVALID_CONFIG {
            CniError::invalid_config(&field, why)
        } else {
            CniError::new(self.code, format!("invalid CNI result field {field:?}: {why}"))
        }
    }

    pub(crate) fn missing(&self, key: &str) -> CniError {
        self.err(key, "missing required field")
    }

    pub(crate) fn wrong_type(&self, key: &str, want: &str, got: &Value) -> CniError {
        self.err(key, format_args!("must be {want}, not {}", json_type(got)))
    }

    /// The value under `key` (exact match first, then case-insensitive when folding);
    /// `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        let v = match self.map.get(key) {
            Some(v) => Some(v),
            None if self.fold => self.map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v),
            None => None,
        };
        v.filter(|v| !v.is_null())
    }

    /// Fields of a nested object found under `key`.
    pub fn nested(&self, key: &str, map: &'a Map<String, Value>) -> Fields<'a> {
        Fields { map, prefix: self.path(key), code: self.code, fold: self.fold }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "a boolean", v)),
        }
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    /// A string that must be present and non-empty.
    pub fn required_str(&self, key: &str) -> Result<&'a str> {
        match self.str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.missing(key)),
        }
    }

    /// An integer in `0..=max` (JSON numbers with a fraction are rejected, as Go does for int).
    pub fn uint(&self, key: &str, max: u64) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => self.uint_value(key, v, max).map(Some),
        }
    }

    pub fn uint_value(&self, key: &str, v: &Value, max: u64) -> Result<u64> {
        let Value::Number(n) = v else {
            return Err(self.wrong_type(key, "an integer", v));
        };
        match (n.as_u64(), n.as_i64()) {
            (Some(u), _) if u <= max => Ok(u),
            (Some(_), _) | (None, Some(_)) => Err(self.err(key, format_args!("{n} is out of range 0..={max}"))),
            (None, None) => Err(self.err(key, format_args!("must be an integer, not {n}"))),
        }
    }

    pub fn object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(self.wrong_type(key, "an object", v)),
        }
    }

    pub fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong_type(key, "an array", v)),
        }
    }

    /// A list of strings (absent -> empty).
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        let Some(items) = self.array(key)? else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(self.wrong_type(&format!("{key}[{i}]"), "a string", other)),
            })
            .collect()
    }

    /// The elements of an array of objects, each with its own `Fields` ("key[i]").
    pub fn objects(&self, key: &str) -> Result<Vec<Fields<'a>>> {
        let Some(items) = self.array(key)? else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let k = format!("{key}[{i}]");
                match v {
                    Value::Object(m) => Ok(self.nested(&k, m)),
                    other => Err(self.wrong_type(&k, "an object", other)),
                }
            })
            .collect()
    }

    /// An IP address string ("" -> None).
    pub fn ip(&self, key: &str) -> Result<Option<IpAddr>> {
        match self.str(key)? {
            None | Some("") => Ok(None),
            Some(s) => {
                s.parse::<IpAddr>().map(Some).map_err(|_| self.err(key, format_args!("{s:?} is not an IP address")))
            }
        }
    }
}

/// `bytes` as a JSON object; anything else is a code-6 error.
pub(super) fn parse_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(CniError::new(
            codes::DECODE_FAILURE,
            format!("error parsing {what}: must be a JSON object, not {}", json_type(&other)),
        )),
        Err(e) => Err(CniError::new(codes::DECODE_FAILURE, format!("error parsing {what}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_rule_is_go_encoding_json() {
        let v = json!({"mtu": 1, "MTU": 2, "HostPort": 80, "gone": null, "Gone": 5, "ipam": {"Subnet": "x"}});
        let m = v.as_object().unwrap();
        let f = Fields::config(m);
        // An exact match wins over a folded one.
        assert_eq!(f.get("mtu"), Some(&json!(1)));
        assert_eq!(f.get("MTU"), Some(&json!(2)));
        // Otherwise keys fold ASCII case.
        assert_eq!(f.get("hostPort"), Some(&json!(80)));
        assert_eq!(f.get("HOSTPORT"), Some(&json!(80)));
        // null is absent.
        assert_eq!(f.get("gone"), None);
        // Nested readers keep the rule; exact() (a Go map) does not fold.
        let ipam = f.object("ipam").unwrap().unwrap();
        assert_eq!(f.nested("ipam", ipam).str("subnet").unwrap(), Some("x"));
        assert_eq!(f.nested("ipam", ipam).path("subnet"), "ipam.subnet");
        assert_eq!(Fields::config(m).exact().get("hostPort"), None);
        assert_eq!(Fields::config(m).exact().get("HostPort"), Some(&json!(80)));
    }
}

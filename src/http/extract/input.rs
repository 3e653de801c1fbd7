//! Request input (JSON bodies, query strings, path parameters) refused with messages in the client's own terms:
//! the JSON path of the field or the parameter's name, and the kind of value expected, rather than serde's and
//! axum's texts, which name the server's Rust types (`expected struct CreateBody with 7 elements`, `expected u32`,
//! `Cannot parse `x` to a `u64``).

use axum::extract::path::ErrorKind;
use axum::extract::rejection::{PathRejection, QueryRejection};
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::http::ApiError;

/// Where the input came from; it names the thing the client got wrong.
#[derive(Clone, Copy)]
enum Place {
    Body,
    Query,
}

impl Place {
    fn item(self) -> &'static str {
        match self {
            Place::Body => "field",
            Place::Query => "query parameter",
        }
    }
}

/// Parses a body that must be a JSON object into `T`.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Derived structs also accept a JSON array of their fields in declaration order; the API documents objects.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => invalid("body must be a JSON object"),
            Err(e) => malformed(&e),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            Category::Data => invalid(&describe(Place::Body, &path, &message(&inner))),
            _ => malformed(&inner),
        }
    })?;
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

fn invalid(message: &str) -> ApiError {
    ApiError::bad_request("invalid_body", message)
}

fn malformed(e: &serde_json::Error) -> ApiError {
    ApiError::bad_request("malformed_json", format!("body is not valid JSON: {e}"))
}

/// serde_json's message without the position it appends (the JSON path says where).
fn message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// A query string that did not fit the route's parameters.
pub fn query_error(rejection: QueryRejection) -> ApiError {
    // axum's text is "Failed to deserialize query string: " + serde_path_to_error's "<path>: <message>".
    let text = rejection.body_text();
    let detail = text.split_once("query string: ").map_or(text.as_str(), |(_, d)| d);
    let (path, message) = match detail.split_once(": ") {
        Some((path, message)) if !path.contains(char::is_whitespace) => (path, message),
        _ => ("", detail),
    };
    ApiError::bad_request("invalid_query", describe(Place::Query, path, message))
}

/// A path parameter that did not parse (an id that must be a number, say).
pub fn path_error(rejection: PathRejection) -> ApiError {
    // Anything but a bad value is the server's own routing mistake.
    if rejection.status().is_server_error() {
        return ApiError::internal(format!("path parameters: {}", rejection.body_text()));
    }
    let message = match rejection {
        PathRejection::FailedToDeserializePathParams(e) => match e.into_kind() {
            ErrorKind::ParseErrorAtKey { key, expected_type, .. } => {
                format!("path parameter `{key}`: expected {}", expected_kind(expected_type, ""))
            }
            ErrorKind::ParseError { expected_type, .. } | ErrorKind::ParseErrorAtIndex { expected_type, .. } => {
                format!("path parameter: expected {}", expected_kind(expected_type, ""))
            }
            ErrorKind::InvalidUtf8InPathParam { key } => format!("path parameter `{key}` is not valid UTF-8"),
            ErrorKind::DeserializeError { key, .. } => format!("path parameter `{key}` has an invalid value"),
            _ => "invalid path parameter".to_string(),
        },
        _ => "invalid path parameter".to_string(),
    };
    ApiError::bad_request("invalid_path", message)
}

/// Fields whose integers are amounts of money.
const MONEY_FIELDS: [&str; 3] = ["price", "amount", "minOrder"];

/// Rewrites one serde data error for the client. `path` is serde_path_to_error's (`.` for the body itself,
/// `address.city`, `items[2]`).
fn describe(place: Place, path: &str, message: &str) -> String {
    let path = if path == "." || path == "?" { "" } else { path };
    let item = place.item();
    let join = |name: &str| if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
    let at = |text: String| match (place, path.is_empty()) {
        (Place::Body, true) => format!("body: {text}"),
        (Place::Query, true) => format!("query string: {text}"),
        _ => format!("{item} `{path}`: {text}"),
    };
    if let Some(name) = message.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
        return format!("missing {item} `{}`", join(name));
    }
    if let Some((name, tail)) = message.strip_prefix("unknown field `").and_then(|r| r.split_once('`')) {
        // With serde_path_to_error the path already ends at the unknown field.
        let field = if path.ends_with(name) { path.to_string() } else { join(name) };
        return match tail.strip_prefix(", expected ") {
            Some(allowed) => format!("unknown {item} `{field}`, expected {allowed}"),
            None => format!("unknown {item} `{field}`: none are accepted here"),
        };
    }
    if let Some((value, tail)) = message.strip_prefix("unknown variant `").and_then(|r| r.split_once('`')) {
        let allowed = tail.strip_prefix(", expected ").unwrap_or("a documented value");
        return at(format!("unknown value `{value}`, expected {allowed}"));
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((got, expected)) = message.strip_prefix(prefix).and_then(|r| r.split_once(", expected ")) {
            return at(format!("expected {}, got {}", expected_kind(expected, path), got_kind(got)));
        }
    }
    if let Some((_, expected)) = message.strip_prefix("invalid length ").and_then(|r| r.split_once(", expected ")) {
        return at(format!("expected {}", expected_kind(expected, path)));
    }
    // Query values are parsed from text by the standard library, whose messages are put in plain words.
    let parsed = match message {
        "invalid digit found in string" => "expected an integer",
        "cannot parse integer from empty string" => "expected an integer, got nothing",
        "number too large to fit in target type" => "the number is too large",
        "number too small to fit in target type" => "the number is too small",
        "invalid float literal" => "expected a number",
        "provided string was not `true` or `false`" => "expected true or false",
        // A field's own parser (a date, for instance) explains itself; anything naming Rust types is replaced.
        m if names_rust_types(m) => "invalid value",
        m => m,
    };
    at(parsed.to_string())
}

/// What serde expected, as a kind of JSON value.
fn expected_kind(expected: &str, path: &str) -> String {
    let e = expected.trim();
    let integer = |kind: &str| {
        let money = MONEY_FIELDS.iter().any(|f| path == *f || path.ends_with(&format!(".{f}")));
        if money {
            format!("{kind} (minor units)")
        } else {
            kind.to_string()
        }
    };
    match e {
        "i64" | "i128" | "isize" => integer("an integer"),
        "u64" | "u128" | "usize" => integer("a non-negative integer"),
        "i8" => integer(&format!("an integer from {} to {}", i8::MIN, i8::MAX)),
        "i16" => integer(&format!("an integer from {} to {}", i16::MIN, i16::MAX)),
        "i32" => integer(&format!("an integer from {} to {}", i32::MIN, i32::MAX)),
        "u8" => integer(&format!("an integer from 0 to {}", u8::MAX)),
        "u16" => integer(&format!("an integer from 0 to {}", u16::MAX)),
        "u32" => integer(&format!("an integer from 0 to {}", u32::MAX)),
        "f32" | "f64" => "a number".into(),
        "a string" | "a borrowed string" | "string" | "a character" | "char" => "a string".into(),
        "a boolean" | "bool" => "true or false".into(),
        "unit" | "null" => "null".into(),
        _ if e.starts_with("struct ")
            || e.starts_with("internally tagged enum ")
            || e.starts_with("a map")
            || e.starts_with("map") =>
        {
            "a JSON object".into()
        }
        _ if e.starts_with("a sequence") || e.starts_with("tuple") || e.starts_with("an array") => "an array".into(),
        _ if e.contains("date and time") => "a date-time such as 2027-01-01T00:00:00Z".into(),
        _ if names_rust_types(e) => "a different kind of value".into(),
        _ => e.to_string(),
    }
}

/// What the client sent, as a kind of JSON value (never echoing strings back).
fn got_kind(got: &str) -> String {
    let quoted = |prefix: &str| got.strip_prefix(prefix).map(|v| v.trim_matches('`').to_string());
    if got.starts_with("string") || got.starts_with("char") {
        "a string".into()
    } else if let Some(v) = quoted("integer ").or_else(|| quoted("floating point ")).or_else(|| quoted("boolean ")) {
        v
    } else {
        match got {
            "sequence" => "an array".into(),
            "map" => "an object".into(),
            "null" | "unit value" | "Option value" => "null".into(),
            _ => "another kind of value".into(),
        }
    }
}

/// Whether a message names the server's types: Rust primitive and std type names, serde's own vocabulary, or a
/// CamelCase identifier such as `CreateBody`.
fn names_rust_types(text: &str) -> bool {
    const WORDS: [&str; 22] = [
        "struct", "enum", "tuple", "newtype", "variant", "Option", "Vec", "String", "i8", "i16", "i32", "i64", "i128",
        "isize", "u8", "u16", "u32", "u64", "u128", "usize", "f32", "f64",
    ];
    text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').any(|word| {
        let camel = word.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && word.chars().skip(1).any(|c| c.is_ascii_uppercase())
            && word.chars().any(|c| c.is_ascii_lowercase());
        camel || WORDS.contains(&word)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct CreateBody {
        title: String,
        price: i64,
        stock: Option<u32>,
        active: Option<bool>,
        address: Option<Address>,
        discount: Option<Discount>,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        tags: Option<Vec<String>>,
        extra: Option<BTreeMap<String, i64>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Address {
        line1: String,
        postal_code: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Discount {
        Percent { percent: u32 },
        Fixed { amount: i64 },
    }

    fn error(body: &str) -> (String, String) {
        let Err(e) = parse_body::<CreateBody>(body.as_bytes()) else { panic!("{body} was accepted") };
        (e.code.to_string(), e.message)
    }

    #[test]
    fn messages_speak_json_not_rust() {
        let cases = [
            (r#"[]"#, "invalid_body", "body must be a JSON object"),
            (r#"["Mug", 5]"#, "invalid_body", "body must be a JSON object"),
            (r#""Mug""#, "invalid_body", "body must be a JSON object"),
            (r#"{"title": "Mug", "price": "5"}"#, "invalid_body", "field `price`: expected an integer (minor units), got a string"),
            (r#"{"title": "Mug", "price": 1.5}"#, "invalid_body", "field `price`: expected an integer (minor units), got 1.5"),
            (r#"{"title": 7, "price": 1}"#, "invalid_body", "field `title`: expected a string, got 7"),
            (r#"{"title": "Mug", "price": 1, "stock": -1}"#, "invalid_body", "field `stock`: expected an integer from 0 to 4294967295, got -1"),
            (r#"{"title": "Mug", "price": 1, "active": "yes"}"#, "invalid_body", "field `active`: expected true or false, got a string"),
            (r#"{"title": "Mug"}"#, "invalid_body", "missing field `price`"),
            (r#"{"title": "Mug", "price": 1, "foo": 1}"#, "invalid_body", "unknown field `foo`, expected one of `title`, `price`, `stock`, `active`, `address`, `discount`, `expiresAt`, `tags`, `extra`"),
            (r#"{"title": "Mug", "price": 1, "address": {"line1": "x"}}"#, "invalid_body", "missing field `address.postalCode`"),
            (r#"{"title": "Mug", "price": 1, "address": {"line1": "x", "postalCode": "y", "zip": 1}}"#, "invalid_body", "unknown field `address.zip`, expected `line1` or `postalCode`"),
            (r#"{"title": "Mug", "price": 1, "address": "x"}"#, "invalid_body", "field `address`: expected a JSON object, got a string"),
            (r#"{"title": "Mug", "price": 1, "discount": {"kind": "bogo"}}"#, "invalid_body", "field `discount.kind`: unknown value `bogo`, expected `percent` or `fixed`"),
            (r#"{"title": "Mug", "price": 1, "discount": 5}"#, "invalid_body", "field `discount`: expected a JSON object, got 5"),
            (r#"{"title": "Mug", "price": 1, "expiresAt": 5}"#, "invalid_body", "field `expiresAt`: expected a date-time such as 2027-01-01T00:00:00Z, got 5"),
            (r#"{"title": "Mug", "price": 1, "expiresAt": "tomorrow"}"#, "invalid_body", "field `expiresAt`: input contains invalid characters"),
            (r#"{"title": "Mug", "price": 1, "tags": [1]}"#, "invalid_body", "field `tags[0]`: expected a string, got 1"),
            (r#"{"title": "Mug", "price": 1, "tags": {}}"#, "invalid_body", "field `tags`: expected an array, got an object"),
            (r#"{"title": "Mug", "price": 1, "extra": {"a": null}}"#, "invalid_body", "field `extra.a`: expected an integer, got null"),
            (r#"{"title": "Mug", "price": 1"#, "malformed_json", "body is not valid JSON: EOF while parsing an object at line 1 column 27"),
            (r#"{"title": "Mug", "price": 1} x"#, "malformed_json", "body is not valid JSON: trailing characters at line 1 column 30"),
            (r#"{"title": null, "price": 1}"#, "invalid_body", "field `title`: expected a string, got null"),
            (r#"{"title": "Mug", "price": 1, "discount": {"kind": "percent", "percent": "x"}}"#, "invalid_body", "field `discount`: expected an integer from 0 to 4294967295, got a string"),
            (r#"{"title": "Mug", "price": 1, "discount": {"kind": "fixed"}}"#, "invalid_body", "missing field `discount.amount`"),
            (r#"{"title": "Mug", "price": 1, "discount": {"percent": 5}}"#, "invalid_body", "missing field `discount.kind`"),
            (r#"{"title": "Mug", "price": 99999999999999999999}"#, "invalid_body", "field `price`: expected an integer (minor units), got 1e+20"),
            (r#"{"title": "Mug", "price": 1, "stock": 99999999999}"#, "invalid_body", "field `stock`: expected an integer from 0 to 4294967295, got 99999999999"),
            ("nope", "malformed_json", "body is not valid JSON: expected ident at line 1 column 2"),
        ];
        for (body, code, message) in cases {
            let (c, m) = error(body);
            assert_eq!(c, code, "{body}: {m}");
            if !message.is_empty() {
                assert_eq!(m, message, "{body}");
            }
            assert!(!names_rust_types(&m), "{body}: {m}");
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Params {
        page: Option<u32>,
        sort: Option<String>,
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let cases = [
            ("page=abc", "query parameter `page`: expected an integer"),
            ("page=-1", "query parameter `page`: expected an integer"),
            ("page=", "query parameter `page`: expected an integer, got nothing"),
            ("page=99999999999", "query parameter `page`: the number is too large"),
            ("foo=1", "unknown query parameter `foo`, expected `page` or `sort`"),
        ];
        for (query, expected) in cases {
            let uri: axum::http::Uri = format!("/things?{query}").parse().unwrap();
            let Err(rejection) = axum::extract::Query::<Params>::try_from_uri(&uri) else {
                panic!("{query} was accepted")
            };
            let e = query_error(rejection);
            assert_eq!((e.code, e.message.as_str()), ("invalid_query", expected), "{query}");
        }
    }

    #[test]
    fn rust_type_names_are_recognised() {
        for text in ["expected struct CreateBody", "expected u32", "invalid type: Option value", "expected i64"] {
            assert!(names_rust_types(text), "{text}");
        }
        for text in
            ["expected one of `title`, `imageUrl`", "input contains invalid characters", "body: expected an integer"]
        {
            assert!(!names_rust_types(text), "{text}");
        }
    }
}

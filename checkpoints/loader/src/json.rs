//! JSON as checkpoints write it: Python's `json.dumps` emits bare `Infinity`, `-Infinity` and
//! `NaN`, which strict JSON parsers reject (transformers 4.x writes `time_step_limit` that way).

use serde_json::Value;

/// Parses JSON, first rewriting bare `Infinity`, `-Infinity` and `NaN` outside strings into
/// transformers 5.x's `{"__float__": "..."}` form.
pub(crate) fn parse_lenient(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(&quote_nonstandard_floats(text))
}

fn quote_nonstandard_floats(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(ch) = rest.chars().next() {
        if in_string {
            out.push(ch);
            match ch {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            rest = &rest[ch.len_utf8()..];
            continue;
        }
        let replacement = [("-Infinity", "-Infinity"), ("Infinity", "Infinity"), ("NaN", "NaN")]
            .into_iter()
            .find(|(token, _)| rest.starts_with(token));
        if let Some((token, name)) = replacement {
            out.push_str(&format!("{{\"__float__\": \"{name}\"}}"));
            rest = &rest[token.len()..];
            continue;
        }
        if ch == '"' {
            in_string = true;
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

/// A float written as a JSON number, a `{"__float__": "Infinity"}` object, or a string.
pub(crate) fn as_float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => parse_float_name(s),
        Value::Object(map) => map.get("__float__").and_then(Value::as_str).and_then(parse_float_name),
        _ => None,
    }
}

fn parse_float_name(s: &str) -> Option<f64> {
    match s.trim() {
        "Infinity" | "inf" | "+inf" | "+Infinity" => Some(f64::INFINITY),
        "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_infinity_outside_strings_is_rewritten() {
        let v = parse_lenient(r#"{"a": [0.0, Infinity], "b": "Infinity NaN", "c": -Infinity}"#).unwrap();
        assert_eq!(as_float(&v["a"][1]), Some(f64::INFINITY));
        assert_eq!(v["b"], "Infinity NaN");
        assert_eq!(as_float(&v["c"]), Some(f64::NEG_INFINITY));
    }

    #[test]
    fn escaped_quotes_keep_string_state() {
        let v = parse_lenient(r#"{"a": "x\"Infinity", "b": Infinity}"#).unwrap();
        assert_eq!(v["a"], "x\"Infinity");
        assert_eq!(as_float(&v["b"]), Some(f64::INFINITY));
    }
}

//! YAML output that `kubectl` reads back exactly.
//!
//! serde_yaml writes YAML 1.2, where `off`, `yes` or `0755` are plain strings, and leaves them
//! unquoted. kubectl (sigs.k8s.io/yaml) reads YAML 1.1, where they are booleans and octal
//! numbers, so an annotation such as `nginx.ingress.kubernetes.io/proxy-buffering: "off"`
//! would come back as a boolean and the apply would fail. This emitter writes block-style
//! YAML that means the same under both versions: a string is left plain only when it is
//! unambiguous under both, and double-quoted (JSON escaping, valid YAML) otherwise.

use serde_json::Value;

/// The value as a YAML document (no leading `---`).
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0, false),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        scalar => {
            write_scalar(&mut out, scalar, 0);
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// Writes `key: value` lines at `indent`; with `first_inline` the first line continues a
/// `- ` already written.
fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize, first_inline: bool) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 || !first_inline {
            pad(out, indent);
        }
        write_string(out, key, indent, true);
        out.push(':');
        match value {
            Value::Object(m) if !m.is_empty() => {
                out.push('\n');
                write_map(out, m, indent + 2, false);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                write_seq(out, items, indent);
            }
            scalar => {
                out.push(' ');
                write_scalar(out, scalar, indent + 2);
                out.push('\n');
            }
        }
    }
}

/// Writes `- item` lines at `indent` (the style kubectl itself prints).
fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        pad(out, indent);
        out.push('-');
        match item {
            Value::Object(m) if !m.is_empty() => {
                out.push(' ');
                write_map(out, m, indent + 2, true);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_seq(out, inner, indent + 2);
            }
            scalar => {
                out.push(' ');
                write_scalar(out, scalar, indent + 2);
                out.push('\n');
            }
        }
    }
}

/// A scalar or an empty collection; `indent` is where block-literal lines go.
fn write_scalar(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s, indent, false),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

fn write_string(out: &mut String, s: &str, indent: usize, is_key: bool) {
    if is_plain_safe(s) {
        out.push_str(s);
    } else if !is_key && is_literal_safe(s) {
        // Multi-line text (the server config) stays readable as a literal block.
        out.push_str(if s.ends_with('\n') { "|" } else { "|-" });
        for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
            out.push('\n');
            if !line.is_empty() {
                pad(out, indent);
                out.push_str(line);
            }
        }
    } else {
        // A JSON string literal is a valid YAML double-quoted scalar.
        out.push_str(&Value::String(s.to_string()).to_string());
    }
}

/// Whether `s` reads back as the same string, unquoted, under YAML 1.1 and 1.2.
///
/// Deliberately conservative: anything starting with a digit (numbers, octal, sexagesimal,
/// timestamps in 1.1), the 1.1 boolean/null words, and any indicator character are quoted.
fn is_plain_safe(s: &str) -> bool {
    const WORDS: [&str; 12] = [
        "y", "n", "yes", "no", "true", "false", "on", "off", "null", "~", "nan", "inf",
    ];
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_')
        || WORDS.contains(&s.to_ascii_lowercase().as_str())
        || s.ends_with([' ', ':'])
        || s.contains(": ")
        || s.contains(" #")
    {
        return false;
    }
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || " ._/@+=-:()',".contains(c))
}

/// Whether `s` can be written as a literal block (`|` / `|-`) unchanged.
fn is_literal_safe(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\n'])
        && !s.ends_with("\n\n")
        && s.chars().all(|c| c == '\n' || !c.is_control())
        && s.lines().all(|l| l == l.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ambiguous_scalars_are_quoted() {
        let v = json!({"a": "off", "b": "Yes", "c": "0755", "d": "9000", "e": "*.example.org",
            "f": "", "g": "1e3", "h": "- x", "i": "a: b", "j": "500m", "k": "on"});
        let text = to_string(&v);
        for line in text.lines() {
            assert!(line.contains(": \""), "not quoted: {line}");
        }
    }

    #[test]
    fn plain_and_block_output() {
        let v = json!({
            "apiVersion": "apps/v1",
            "metadata": {"name": "tas", "labels": {"app.kubernetes.io/name": "cloudify"}, "empty": {}},
            "list": [{"name": "a", "port": 9000, "ok": true}, "x", ["z"], []],
            "text": "datasets:\n- name: tas\n\n  sources: [x]\n",
            "url": "https://data.example.org/datasets/tas/zarr",
        });
        let text = to_string(&v);
        let expected = "\
apiVersion: apps/v1
metadata:
  name: tas
  labels:
    app.kubernetes.io/name: cloudify
  empty: {}
list:
- name: a
  port: 9000
  ok: true
- x
-
  - z
- []
text: |
  datasets:
  - name: tas

    sources: [x]
url: https://data.example.org/datasets/tas/zarr
";
        assert_eq!(text, expected);
        let back: Value = serde_yaml::from_str(&text).expect("valid YAML");
        assert_eq!(back, v);
    }

    #[test]
    fn round_trips_awkward_strings() {
        let v = json!({"s": ["a\tb", " lead", "trail ", "x\n\n", "quote\"d", "ü", "\n", "a #b", "#c"]});
        let back: Value = serde_yaml::from_str(&to_string(&v)).expect("valid YAML");
        assert_eq!(back, v);
    }
}

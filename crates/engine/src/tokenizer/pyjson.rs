//! JSON written the way Python's `json.dumps` writes it (what transformers' chat templates see through `tojson`):
//! `", "` between items and `": "` after keys (or newlines and `indent` spaces), keys in their order, floats as
//! Python's `repr`, and non-ASCII characters kept or, with `ensure_ascii`, escaped as `\uXXXX`.

use serde_json::Value;

/// Appends `v` at nesting `level` to `out`.
pub fn write(v: &Value, indent: Option<usize>, ensure_ascii: bool, level: usize, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => string(s, ensure_ascii, out),
        Value::Array(a) => {
            let items: Vec<&Value> = a.iter().collect();
            container(('[', ']'), items.len(), indent, level, out, |i, out| {
                write(items[i], indent, ensure_ascii, level + 1, out)
            });
        }
        Value::Object(m) => {
            let items: Vec<(&String, &Value)> = m.iter().collect();
            container(('{', '}'), items.len(), indent, level, out, |i, out| {
                string(items[i].0, ensure_ascii, out);
                out.push_str(": ");
                write(items[i].1, indent, ensure_ascii, level + 1, out);
            });
        }
    }
}

/// `[a, b]` or, indented, `[\n  a,\n  b\n]`; empty containers stay `[]`.
fn container(
    (open, close): (char, char),
    n: usize,
    indent: Option<usize>,
    level: usize,
    out: &mut String,
    mut item: impl FnMut(usize, &mut String),
) {
    out.push(open);
    for i in 0..n {
        match indent {
            Some(w) => {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.extend(std::iter::repeat_n(' ', w * (level + 1)));
            }
            None if i > 0 => out.push_str(", "),
            None => {}
        }
        item(i, out);
    }
    if let (Some(w), true) = (indent, n > 0) {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', w * level));
    }
    out.push(close);
}

fn string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr` of a float: the shortest round-trip digits, `1.0` for integral values, an exponent (`1e-05`,
/// `1e+16`) below 1e-4 or from 1e16.
fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let e = format!("{f:e}"); // "1e-5", "1.5e20"
        let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
        let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_as_python_repr() {
        for (f, want) in
            [(1.0, "1.0"), (0.1, "0.1"), (1e-5, "1e-05"), (1.5e20, "1.5e+20"), (-2.5, "-2.5"), (0.0, "0.0")]
        {
            assert_eq!(float_repr(f), want);
        }
    }

    #[test]
    fn escapes() {
        let mut out = String::new();
        write(&serde_json::json!("a\u{1}😀é"), None, true, 0, &mut out);
        assert_eq!(out, "\"a\\u0001\\ud83d\\ude00\\u00e9\"");
    }
}

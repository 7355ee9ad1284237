//! A report for a person at a terminal: the encoded JSON indented, two spaces a level, one
//! member or element a line, short objects and lists on one. Works on the encoded bytes, so what is shown is exactly what
//! a program reading the one-line form gets.

/// The widest object or array kept on one line, in compact bytes.
const INLINE: usize = 72;

/// `json`, compact as the encoder writes it, indented; an object or array of at most
/// [`INLINE`] compact bytes stays on one line.
pub fn indent(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.extend(std::iter::repeat_n(b' ', depth * 2));
    };
    let mut at = 0;
    while let Some(&b) = json.get(at) {
        match b {
            b'"' => {
                let end = string_end(json, at);
                out.extend_from_slice(&json[at..end]);
                at = end;
                continue;
            }
            b'[' | b'{' if let Some(end) = short_end(json, at) => {
                inline(&json[at..end], &mut out);
                at = end;
                continue;
            }
            b'{' | b'[' => {
                out.push(b);
                // An empty object or array stays on its line.
                if let Some(&close @ (b'}' | b']')) = json.get(at + 1) {
                    out.push(close);
                    at += 1;
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(b);
            }
            b',' => {
                out.push(b);
                newline(&mut out, depth);
            }
            b':' => out.extend_from_slice(b": "),
            b' ' | b'\n' | b'\t' | b'\r' => {}
            other => out.push(other),
        }
        at += 1;
    }
    out
}

/// The end (one past the closing quote) of the string that opens at `start`.
fn string_end(json: &[u8], start: usize) -> usize {
    let mut escaped = false;
    for (i, &b) in json.iter().enumerate().skip(start + 1) {
        match (escaped, b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return i + 1,
            _ => {}
        }
    }
    json.len()
}

/// The end of the object or array that opens at `start`, when it is at most [`INLINE`]
/// bytes long.
fn short_end(json: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = start;
    while at < json.len() && at - start < INLINE {
        match json[at] {
            b'"' => {
                at = string_end(json, at);
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(at + 1);
                }
            }
            _ => {}
        }
        at += 1;
    }
    None
}

/// An object or array on one line, a space after each comma and colon.
fn inline(short: &[u8], out: &mut Vec<u8>) {
    let mut at = 0;
    while let Some(&b) = short.get(at) {
        if b == b'"' {
            let end = string_end(short, at);
            out.extend_from_slice(&short[at..end]);
            at = end;
            continue;
        }
        out.push(b);
        if b == b',' || b == b':' {
            out.push(b' ');
        }
        at += 1;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn indents_and_keeps_every_value_and_the_order_of_members() {
        let long = format!("[{}]", ["\"10.0.0.1\""; 8].join(","));
        let compact = format!(
            r#"{{"header":{{"report_id":7,"version":"1.0","padding":"to be longer than one line can hold"}},"metrics":{{"ports":[],"s":"a,b:{{\"c\"}}[\\","n":[22,80],"l":["a,b","]"],"long":{long}}},"custom_metrics":{{"x":[{{"number":1.5}}]}}}}"#
        );
        let compact = compact.as_bytes();
        let indented = indent(compact);
        let text = String::from_utf8(indented).unwrap();
        assert_eq!(
            text,
            r#"{
  "header": {
    "report_id": 7,
    "version": "1.0",
    "padding": "to be longer than one line can hold"
  },
  "metrics": {
    "ports": [],
    "s": "a,b:{\"c\"}[\\",
    "n": [22, 80],
    "l": ["a,b", "]"],
    "long": [
      "10.0.0.1",
      "10.0.0.1",
      "10.0.0.1",
      "10.0.0.1",
      "10.0.0.1",
      "10.0.0.1",
      "10.0.0.1",
      "10.0.0.1"
    ]
  },
  "custom_metrics": {"x": [{"number": 1.5}]}
}"#
        );
        let parsed = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
        assert_eq!(parsed(text.as_bytes()), parsed(compact));
    }
}

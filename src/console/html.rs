//! HTML escaping for the console page. Every value the page shows passes
//! through [`escape`] (text and double-quoted attribute values alike):
//! most of them came from the network (paths, reasons, order numbers
//! claimed by unverified bodies).

use std::fmt::Write as _;

/// `s` with `& < > " '` replaced by character references, control
/// characters (other than tab and newline) by U+FFFD, and the invisible
/// characters that reorder or hide text (bidi overrides and isolates,
/// zero-width ones, the BOM) written out as `\u{202e}`, as the text log
/// writes them, so no value can open a tag, leave an attribute, hide text
/// or make a claimed order number read as another.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    push_escaped(&mut out, s);
    out
}

/// Appends `s`, escaped as [`escape`] does, to `out`.
pub fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c if reorders_or_hides(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Unicode format characters that change the order text is shown in, or
/// take no room: U+202E turns `ORD…gnp.exe` around the marker after it,
/// U+200B makes two order numbers look the same.
fn reorders_or_hides(c: char) -> bool {
    matches!(
        c,
        '\u{61c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Escapes `s` and turns each pair of backticks (README's `code`) into
/// `<code>`; an unpaired backtick stays as it is.
pub fn escape_with_code(s: &str) -> String {
    let parts: Vec<&str> = s.split('`').collect();
    let mut out = String::with_capacity(s.len() + 16);
    for (i, part) in parts.iter().enumerate() {
        let inside = i % 2 == 1;
        let closed = i + 1 < parts.len() || !inside;
        match (inside, closed) {
            (true, true) => {
                out.push_str("<code>");
                push_escaped(&mut out, part);
                out.push_str("</code>");
            }
            (true, false) => {
                out.push('`');
                push_escaped(&mut out, part);
            }
            _ => push_escaped(&mut out, part),
        }
    }
    out
}

/// Percent-encodes `s` for a query string value (`?q=`): everything but
/// unreserved characters.
pub fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile strings an attacker can put in a path, a reason or a
    /// claimed order number.
    const HOSTILE: &[&str] = &[
        "<script>alert(1)</script>",
        "\"><img src=x onerror=alert(1)>",
        "' onmouseover='alert(1)",
        "</td></tr></table><form action=//evil.example>",
        "&lt;already&gt; &amp;",
        "javascript:alert(1)",
        "<!--",
        "]]><![CDATA[",
        "a\u{0}b\u{1b}[31mc\u{7f}",
        "<svg/onload=alert(1)>",
        "`<b>`",
    ];

    #[test]
    fn hostile_strings_cannot_open_tags_or_leave_attributes() {
        for s in HOSTILE {
            for out in [escape(s), escape_with_code(s)] {
                let without_code = out.replace("<code>", "").replace("</code>", "");
                assert!(!without_code.contains('<'), "{s:?} → {out}");
                assert!(!without_code.contains('>'), "{s:?} → {out}");
                assert!(!out.contains('"'), "{s:?} → {out}");
                assert!(!out.contains('\''), "{s:?} → {out}");
                assert!(
                    !out.chars()
                        .any(|c| c.is_control() && c != '\t' && c != '\n'),
                    "{s:?} → {out:?}"
                );
            }
        }
    }

    #[test]
    fn text_that_reorders_or_hides_itself_is_written_out() {
        assert_eq!(
            escape("ORD\u{202e}gnp.exe\u{202c}\u{200b}\u{feff}\u{2066}x\u{2069}"),
            "ORD\\u{202e}gnp.exe\\u{202c}\\u{200b}\\u{feff}\\u{2066}x\\u{2069}"
        );
        // Ordinary text of every script stays as it is.
        assert_eq!(escape("测试 商品 ÄÖ ١٢٣ שלום"), "测试 商品 ÄÖ ١٢٣ שלום");
    }

    #[test]
    fn escaping_is_exact() {
        assert_eq!(
            escape("a<b>&\"c'"),
            "a&lt;b&gt;&amp;&quot;c&#39;".to_owned()
        );
        assert_eq!(escape("订单 42"), "订单 42");
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }

    #[test]
    fn code_spans() {
        assert_eq!(
            escape_with_code("set `a<b` then `c`"),
            "set <code>a&lt;b</code> then <code>c</code>"
        );
        assert_eq!(escape_with_code("odd ` tick"), "odd ` tick");
    }

    #[test]
    fn query_values() {
        assert_eq!(query_value("A-1_b.~"), "A-1_b.~");
        assert_eq!(query_value("a b&c=d\"<"), "a%20b%26c%3Dd%22%3C");
        assert_eq!(query_value("订"), "%E8%AE%A2");
    }
}

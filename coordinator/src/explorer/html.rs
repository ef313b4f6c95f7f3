//! Building HTML safely: every value that came from a user passes through [`esc`].

use std::fmt::Write;

/// Text (or an attribute value) with HTML's special characters escaped.
pub fn esc(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A value for a URL's path segment or query.
pub fn url_encode(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            encoded.push(byte as char);
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// A whole page: the navigation bar with `active` marked, then `body`. The login page
/// (`active` = `login`) has no links to pages it cannot show yet.
pub fn page(title: &str, active: &str, body: &str) -> String {
    let link = |href: &str, name: &str| {
        let class = if name == active {
            " class=\"active\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{class}>{name}</a>")
    };
    let links = if active == "login" {
        String::new()
    } else {
        format!(
            "{}{}{}<a href=\"/logout\" class=\"logout\">log out</a>",
            link("/", "Models"),
            link("/jobs", "Jobs"),
            link("/datasets", "Datasets")
        )
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Heirloom</title><link rel=\"stylesheet\" href=\"/assets/explorer.css\">\
         <script src=\"/assets/explorer.js\" defer></script></head><body>\
         <nav><span class=\"brand\">Heirloom</span>{links}</nav><main>{body}</main></body></html>",
        esc(title),
    )
}

pub use heirloom_client::display::bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_encodes_urls() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(url_encode("/models/a b?x=1&y"), "/models/a%20b%3Fx%3D1%26y");
    }
}

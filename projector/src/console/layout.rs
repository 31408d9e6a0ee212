//! The page shell every console page shares, the stylesheet, and the small
//! formatting helpers pages use. Pages are server-rendered HTML with no
//! script: maud escapes every value put into them.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{DOCTYPE, Markup, html};

use super::PREFIX;
use super::session::Operator;

/// A page's title and content.
#[derive(Debug)]
pub struct Page<'a> {
    pub title: &'a str,
    pub body: Markup,
}

/// A page with the console's navigation, for a logged-in operator.
pub fn page(operator: &Operator, page: Page<'_>) -> Markup {
    shell(
        page.title,
        html! {
            header {
                nav {
                    a.brand href=(PREFIX) { "hookstream" }
                    a href=(PREFIX) { "Overview" }
                    a href={ (PREFIX) "failures" } { "Failures" }
                    form.search method="get" action={ (PREFIX) "customers" } {
                        input type="search" name="q" placeholder="external id, email, customer or member id" aria-label="Search customers";
                        button type="submit" { "Search" }
                    }
                    form.logout method="post" action={ (PREFIX) "logout" } {
                        input type="hidden" name="csrf" value=(operator.csrf);
                        button type="submit" { "Log out" }
                    }
                }
            }
            main { h1 { (page.title) } (page.body) }
        },
    )
}

/// A page without navigation (the login form).
pub fn bare(page: Page<'_>) -> Markup {
    shell(page.title, html! { main.bare { (page.body) } })
}

/// A short page that only says something (a refusal, a missing object).
pub fn message_page(title: &str, message: &str) -> Markup {
    bare(Page {
        title,
        body: html! {
            h1 { (title) }
            p { (message) }
            p { a href=(PREFIX) { "Back to the console" } }
        },
    })
}

fn shell(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · hookstream console" }
                link rel="stylesheet" href={ (PREFIX) "assets/console.css" };
            }
            body { (content) }
        }
    }
}

/// `2026-12-02 17:14:15.123Z`, or a dash.
pub fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "—".to_owned(),
        |t| {
            t.to_rfc3339_opts(SecondsFormat::Millis, true)
                .replacen('T', " ", 1)
        },
    )
}

/// A link to a logged event.
pub fn event_link(seq: i64) -> Markup {
    html! { a href={ (PREFIX) "events/" (seq) } { "#" (seq) } }
}

/// A link to a customer's page.
pub fn customer_link(id: &str) -> Markup {
    html! { a href={ (PREFIX) "customers/" (urlencode(id)) } { (id) } }
}

pub fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The stylesheet, served from the binary.
pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

const STYLESHEET: &str = r#"
:root { --fg: #1c2330; --muted: #5d6878; --line: #dde2ea; --bg: #f6f7f9; --accent: #2557d6;
        --ok: #1a7f37; --bad: #c0262d; --warn: #9a6700; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
header { background: #fff; border-bottom: 1px solid var(--line); }
nav { display: flex; gap: 1rem; align-items: center; padding: .6rem 1.5rem; }
nav a { color: var(--fg); text-decoration: none; }
nav a.brand { font-weight: 700; }
nav form.search { margin-left: auto; display: flex; gap: .4rem; }
nav form.search input { width: 22rem; }
main { padding: 1rem 1.5rem 3rem; max-width: 90rem; }
main.bare { max-width: 28rem; margin: 4rem auto; background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 1.5rem; }
h1 { font-size: 1.35rem; margin: .4rem 0 1rem; }
h2 { font-size: 1.05rem; margin: 1.6rem 0 .5rem; }
a { color: var(--accent); }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f5; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; }
pre { background: #fff; border: 1px solid var(--line); padding: .8rem; overflow: auto; max-height: 40rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(12rem, 1fr)); gap: .8rem; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .7rem .9rem; }
.card .value { font-size: 1.5rem; font-weight: 600; }
.card .label { color: var(--muted); }
.ok { color: var(--ok); } .bad { color: var(--bad); } .warn { color: var(--warn); } .muted { color: var(--muted); }
.pill { display: inline-block; padding: 0 .45rem; border-radius: 999px; font-size: 12px; border: 1px solid currentColor; }
.answer { background: #fff; border: 1px solid var(--line); border-left: 4px solid var(--muted); padding: .7rem 1rem; margin: .6rem 0; }
.answer.granted { border-left-color: var(--ok); } .answer.denied { border-left-color: var(--bad); }
.banner { background: #fff; border: 1px solid var(--line); border-left: 4px solid var(--accent); padding: .6rem 1rem; margin-bottom: 1rem; }
.problem { color: var(--bad); }
form.inline { display: inline; }
form.login label { display: block; margin: .8rem 0 .3rem; }
form.login input[type=password] { width: 100%; padding: .45rem; }
form.login button { margin-top: 1rem; }
.hint { color: var(--muted); font-size: 12.5px; }
input, button { font: inherit; padding: .3rem .6rem; }
button { cursor: pointer; background: var(--accent); color: #fff; border: 0; border-radius: 4px; }
nav form.logout button { background: none; color: var(--muted); border: 1px solid var(--line); }
svg.chart { background: #fff; border: 1px solid var(--line); width: 100%; height: 140px; }
svg.chart .received { fill: #8fb0f2; } svg.chart .applied { fill: #2b7a4b; }
.legend .swatch.received { background: #8fb0f2; } .legend .swatch.applied { background: #2b7a4b; }
.legend span { margin-right: 1rem; } .legend .swatch { display: inline-block; width: .8rem; height: .8rem; vertical-align: middle; margin-right: .3rem; }
"#;

/// Indents a JSON text without parsing it into a map, so keys keep the
/// order the sender wrote them in. Text that is not JSON comes out with
/// whitespace added only outside its string literals.
pub fn pretty_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                let closing = if c == '{' { '}' } else { ']' };
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if chars.peek() == Some(&closing) {
                    out.push(closing);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::pretty_json;

    #[test]
    fn json_is_indented_in_its_own_key_order() {
        let raw = r#"{"type":"a","data":{"z":1,"a":[1, 2],"s":"x, {y}: \"q\"","e":{},"l":[]}}"#;
        let pretty = pretty_json(raw);
        assert_eq!(
            pretty,
            "{\n  \"type\": \"a\",\n  \"data\": {\n    \"z\": 1,\n    \"a\": [\n      1,\n      2\n    ],\n    \
             \"s\": \"x, {y}: \\\"q\\\"\",\n    \"e\": {},\n    \"l\": []\n  }\n}"
        );
        let reparsed: serde_json::Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(
            reparsed,
            serde_json::from_str::<serde_json::Value>(raw).unwrap()
        );
    }
}

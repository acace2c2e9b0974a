//! HTML: keeps the main content and its structure, drops scripts, styles, navigation and other
//! page furniture. The walk is iterative, so absurdly deep nesting cannot overflow the stack.

use ego_tree::iter::Edge;
use scraper::{ElementRef, Html, Node, Selector};

use super::{Extracted, push_block};

/// Elements whose whole subtree is never content.
const DROP: &[&str] = &[
    "script", "style", "noscript", "template", "nav", "aside", "form", "button", "select", "svg",
    "iframe", "object", "canvas", "head", "dialog", "menu",
];

/// Elements that end one block and start another.
const BLOCK: &[&str] = &[
    "p",
    "div",
    "li",
    "dt",
    "dd",
    "pre",
    "blockquote",
    "tr",
    "table",
    "ul",
    "ol",
    "dl",
    "section",
    "article",
    "main",
    "figure",
    "figcaption",
    "caption",
    "address",
    "details",
    "summary",
    "body",
    "hr",
];

/// `class`/`id` words and roles that mark boilerplate.
const BOILERPLATE_WORDS: &[&str] = &[
    "nav",
    "navbar",
    "navigation",
    "menu",
    "sidebar",
    "footer",
    "breadcrumb",
    "breadcrumbs",
    "cookie",
    "cookies",
    "skip-link",
    "skiplink",
    "toc",
    "banner",
    "masthead",
    "pagination",
    "share",
    "social",
    "advert",
    "ads",
];
const BOILERPLATE_ROLES: &[&str] = &[
    "navigation",
    "banner",
    "contentinfo",
    "search",
    "complementary",
];

#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "only elements and text carry content"
)]
pub(super) fn parse(text: &str) -> Extracted {
    let html = Html::parse_document(text);
    let mut out = Extracted::default();
    // invariant: these selectors are valid literals.
    let title_sel = Selector::parse("title").expect("valid selector");
    out.title = html
        .select(&title_sel)
        .next()
        .map(|t| squash(&t.text().collect::<String>()))
        .filter(|t| !t.is_empty());

    let pick = |s: &str| {
        let sel = Selector::parse(s).expect("valid selector");
        html.select(&sel).next()
    };
    let (root, in_content) = match pick("main").or_else(|| pick("article")) {
        Some(r) => (r, true),
        None => match pick("body") {
            Some(r) => (r, false),
            None => (html.root_element(), false),
        },
    };

    let mut w = Walker {
        out: &mut out,
        buf: String::new(),
        path: Vec::new(),
        heading: None,
    };
    let mut skip = 0usize;
    for edge in root.traverse() {
        match edge {
            Edge::Open(node) => match node.value() {
                Node::Element(_) if skip > 0 => skip += 1,
                Node::Element(el) => {
                    let el_ref = ElementRef::wrap(node).expect("element node");
                    if is_dropped(el_ref, in_content) {
                        skip = 1;
                        continue;
                    }
                    w.open(el.name());
                }
                Node::Text(t) if skip == 0 => w.buf.push_str(t),
                _ => {}
            },
            Edge::Close(node) => match node.value() {
                Node::Element(_) if skip > 0 => skip -= 1,
                Node::Element(el) => w.close(el.name()),
                _ => {}
            },
        }
    }
    w.flush();
    out
}

fn is_dropped(el: ElementRef<'_>, in_content: bool) -> bool {
    let v = el.value();
    let name = v.name();
    if DROP.contains(&name) || (!in_content && matches!(name, "header" | "footer")) {
        return true;
    }
    if v.attr("hidden").is_some() || v.attr("aria-hidden") == Some("true") {
        return true;
    }
    if v.attr("role")
        .is_some_and(|r| BOILERPLATE_ROLES.contains(&r))
    {
        return true;
    }
    let words = v.classes().chain(v.id());
    words
        .into_iter()
        .any(|w| BOILERPLATE_WORDS.contains(&w.to_ascii_lowercase().as_str()))
}

struct Walker<'a> {
    out: &'a mut Extracted,
    buf: String,
    path: Vec<(u8, String)>,
    heading: Option<u8>,
}

impl Walker<'_> {
    fn heading_path(&self) -> Vec<String> {
        self.path.iter().map(|(_, h)| h.clone()).collect()
    }

    fn flush(&mut self) {
        let path = self.heading_path();
        push_block(&mut self.out.blocks, &squash(&self.buf), None, &path);
        self.buf.clear();
    }

    fn open(&mut self, name: &str) {
        if let Some(level) = heading_level(name) {
            self.flush();
            self.heading = Some(level);
        } else if name == "br" {
            self.buf.push('\n');
        } else if matches!(name, "td" | "th") {
            self.buf.push_str(" | ");
        } else if BLOCK.contains(&name) && self.heading.is_none() {
            self.flush();
        }
    }

    fn close(&mut self, name: &str) {
        if let Some(level) = heading_level(name) {
            if self.heading.take().is_some() {
                let title = squash(&self.buf);
                self.buf.clear();
                self.path.retain(|(l, _)| *l < level);
                if !title.is_empty() {
                    self.path.push((level, title.clone()));
                    let path = self.heading_path();
                    push_block(&mut self.out.blocks, &title, None, &path);
                }
            }
        } else if BLOCK.contains(&name) && self.heading.is_none() {
            self.flush();
        } else if !self.buf.ends_with(char::is_whitespace) && inline_gap(name) {
            self.buf.push(' ');
        }
    }
}

fn inline_gap(name: &str) -> bool {
    matches!(name, "td" | "th" | "label" | "option")
}

fn heading_level(name: &str) -> Option<u8> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<!doctype html><html><head><title> Net  guide </title>
<style>body{color:red}</style><script>var secret = "do not index";</script></head>
<body><div class="navbar"><a href="/">Home</a> <a href="/x">Menu item</a></div>
<nav><ul><li>Site map</li></ul></nav>
<h1>Networking</h1><p>Configure <b>interfaces</b> with
 ip.</p><h2>Routes</h2><ul><li>Add a route</li><li>Delete it</li></ul>
<table><tr><th>cmd</th><th>effect</th></tr><tr><td>ip r</td><td>show</td></tr></table>
<h2>DNS</h2><p>Edit resolv.conf<br>carefully.</p>
<footer>Copyright footer text</footer></body></html>"#;

    #[test]
    fn keeps_content_and_headings_drops_boilerplate() {
        let doc = parse(PAGE);
        assert_eq!(doc.title.as_deref(), Some("Net guide"));
        let all: String = doc
            .blocks
            .iter()
            .map(|b| b.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        for gone in ["secret", "color:red", "Menu item", "Site map", "Copyright"] {
            assert!(!all.contains(gone), "{gone} leaked into {all}");
        }
        let got: Vec<(&str, String)> = doc
            .blocks
            .iter()
            .map(|b| (b.text.as_str(), b.heading.join(" > ")))
            .collect();
        assert_eq!(
            got,
            vec![
                ("Networking", "Networking".into()),
                ("Configure interfaces with ip.", "Networking".into()),
                ("Routes", "Networking > Routes".into()),
                ("Add a route", "Networking > Routes".into()),
                ("Delete it", "Networking > Routes".into()),
                ("| cmd | effect", "Networking > Routes".into()),
                ("| ip r | show", "Networking > Routes".into()),
                ("DNS", "Networking > DNS".into()),
                ("Edit resolv.conf carefully.", "Networking > DNS".into()),
            ]
        );
    }

    #[test]
    fn prefers_main_content_and_survives_deep_nesting() {
        let doc =
            parse("<html><body><div>chrome</div><main><p>the content</p></main></body></html>");
        assert_eq!(doc.blocks.len(), 1);
        assert_eq!(doc.blocks[0].text, "the content");

        let deep = format!(
            "<html><body>{}deep text{}</body></html>",
            "<span>".repeat(200_000),
            "</span>".repeat(200_000)
        );
        let doc = parse(&deep);
        assert_eq!(
            doc.blocks.last().map(|b| b.text.as_str()),
            Some("deep text")
        );
    }
}

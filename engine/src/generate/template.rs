//! Chat templates: rendering a conversation into the model's prompt format.
//!
//! A model's template is the Jinja source in its GGUF's `tokenizer.chat_template`, as Hugging
//! Face's `apply_chat_template` runs it. Files without one get a built-in template chosen by the
//! markers their vocabulary has (Gemma's `<start_of_turn>`, else ChatML's `<|im_start|>`). A
//! user may supply their own source instead.
//!
//! Templates run under minijinja, set up like transformers' Jinja environment: `trim_blocks`
//! and `lstrip_blocks`, Python string/dict/list methods (`.strip()`, `.startswith()`, `.get()`,
//! ... via minijinja-contrib's pycompat), `raise_exception(msg)`, `strftime_now(fmt)` and a
//! `tojson` filter formatting as Python's `json.dumps`. The context holds `messages`,
//! `add_generation_prompt`, `bos_token` and `eos_token`. Templates compile once, at
//! construction.
//!
//! BOS: the rendered text carries whatever the template writes, `{{ bos_token }}` included (the
//! Gemma built-in writes it, like Gemma's own template; ChatML has none). The text goes to
//! [`GenTokenizer::encode`], which adds BOS only when the text does not already begin with it,
//! so the prompt holds exactly one BOS either way.

use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use super::tokenizer::GenTokenizer;
use crate::error::{EngineError, Result};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

/// The name the template is compiled under.
const NAME: &str = "chat";

/// Gemma's turn format. A system message has no turn of its own: it opens the first user turn,
/// followed by a blank line, as Gemma's template does. Turns must alternate user/model.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}
{%- if messages and messages[0].role == 'system' -%}
  {%- set preamble = messages[0].content | trim ~ '\n\n' -%}
  {%- set turns = messages[1:] -%}
{%- else -%}
  {%- set preamble = '' -%}
  {%- set turns = messages -%}
{%- endif -%}
{%- for m in turns -%}
  {%- if (m.role == 'user') != (loop.index0 is even) -%}
    {{ raise_exception('conversation roles must alternate user/assistant/user/... after an optional system message') }}
  {%- endif -%}
  {{ '<start_of_turn>' ~ ('model' if m.role == 'assistant' else m.role) ~ '\n' }}
  {{- (preamble if loop.first else '') ~ (m.content | trim) ~ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// ChatML, the generic fallback.
const CHATML_TEMPLATE: &str = "{%- for m in messages -%}
  {{ '<|im_start|>' ~ m.role ~ '\n' ~ m.content ~ '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}";

/// Where a template came from, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// `tokenizer.chat_template` in the model file.
    ModelFile,
    /// A built-in template, by name.
    BuiltIn(&'static str),
    /// Supplied by the user.
    User,
}

/// A compiled chat template. Rendering is thread-safe.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    origin: Origin,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The error `raise_exception` raises, recognised when rendering fails.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl ChatTemplate {
    /// The model's template: `tokenizer.chat_template` when the file has one, else a built-in
    /// one for the markers its vocabulary has. `architecture` is only named in errors.
    ///
    /// Fails with `Unsupported` when there is neither, or when the file's template does not
    /// compile here (a Jinja feature minijinja lacks); a template can then be supplied with
    /// [`from_source`](Self::from_source).
    pub(crate) fn from_gguf(
        content: &Content,
        architecture: &str,
        tokenizer: &GenTokenizer,
    ) -> Result<Self> {
        match content
            .metadata
            .get("tokenizer.chat_template")
            .map(GgufValue::to_string)
        {
            Some(Ok(src)) => {
                Self::compile(src.clone(), tokenizer, Origin::ModelFile).map_err(|e| {
                    EngineError::Unsupported(format!(
                        "the model's chat template (tokenizer.chat_template) does not compile: \
                         {e}; supply one in the engine config"
                    ))
                })
            }
            Some(Err(_)) => Err(EngineError::Unsupported(
                "the model's tokenizer.chat_template is not a string; supply one in the engine \
                 config"
                    .to_owned(),
            )),
            None => {
                let has = |t: &str| tokenizer.token_id(t).is_some();
                let (name, src) = if has("<start_of_turn>") && has("<end_of_turn>") {
                    ("gemma", GEMMA_TEMPLATE)
                } else if has("<|im_start|>") && has("<|im_end|>") {
                    ("chatml", CHATML_TEMPLATE)
                } else {
                    return Err(EngineError::Unsupported(format!(
                        "the model file ({architecture}) has no chat template and its vocabulary \
                         matches no built-in one; supply one in the engine config"
                    )));
                };
                Self::compile(src.to_owned(), tokenizer, Origin::BuiltIn(name))
                    .map_err(|e| EngineError::Internal(format!("built-in {name} template: {e}")))
            }
        }
    }

    /// A user-supplied template. Fails with `InvalidInput` naming the problem when it does not
    /// compile.
    pub(crate) fn from_source(src: String, tokenizer: &GenTokenizer) -> Result<Self> {
        Self::compile(src, tokenizer, Origin::User)
            .map_err(|e| EngineError::InvalidInput(format!("chat template does not compile: {e}")))
    }

    fn compile(
        src: String,
        tokenizer: &GenTokenizer,
        origin: Origin,
    ) -> std::result::Result<Self, String> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, src)
            .map_err(|e| describe(&e))?;
        let marker = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_str(id))
                .unwrap_or_default()
                .to_owned()
        };
        Ok(Self {
            env,
            bos_token: marker(tokenizer.bos()),
            eos_token: marker(Some(tokenizer.eos())),
            origin,
        })
    }

    /// The prompt text for `messages`, ending with the assistant turn's opening when
    /// `add_generation_prompt`. Fails with `InvalidInput` carrying the template's message when
    /// the template calls `raise_exception` (e.g. roles that do not alternate), or naming the
    /// problem when rendering fails otherwise.
    pub(crate) fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| EngineError::Internal(format!("chat template: {}", describe(&e))))?;
        let ctx = minijinja::context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        template.render(ctx).map_err(|e| {
            let raised = std::iter::successors(std::error::Error::source(&e), |s| s.source())
                .find_map(|s| s.downcast_ref::<Raised>());
            match raised {
                Some(Raised(msg)) => EngineError::InvalidInput(msg.clone()),
                None => EngineError::InvalidInput(format!(
                    "rendering the chat template: {}",
                    describe(&e)
                )),
            }
        })
    }
}

/// A minijinja error with its line, e.g. `syntax error: unexpected end of input (line 3)`.
fn describe(e: &JinjaError) -> String {
    let mut s = e.kind().to_string();
    if let Some(detail) = e.detail() {
        s.push_str(": ");
        s.push_str(detail);
    }
    if let Some(line) = e.line() {
        s.push_str(&format!(" (line {line})"));
    }
    s
}

/// `raise_exception(msg)`: fails the render with `msg`, as transformers' templates expect.
fn raise_exception(msg: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
}

/// `tojson` as transformers defines it: Python's `json.dumps` (`", "` and `": "` separators,
/// non-ASCII kept, optional `indent`), not HTML-escaped.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let json = serde_json::to_value(value)
        .map_err(|e| JinjaError::new(ErrorKind::BadSerialization, e.to_string()))?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_py_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        serde_json::Value::Array(items) if items.is_empty() => out.push_str("[]"),
        serde_json::Value::Object(map) if map.is_empty() => out.push_str("{}"),
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        serde_json::Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        serde_json::Value::Null
        | serde_json::Value::Bool(_)
        | serde_json::Value::Number(_)
        | serde_json::Value::String(_) => out.push_str(&v.to_string()),
    }
}

/// `strftime_now(fmt)`: the current UTC time formatted with chrono's `strftime` codes (`%Y
/// %m %d %H %M %S %y %b %B %a %A %j %p %I %e %%` and the rest of its set).
///
/// A template must never bring the engine down, and chrono's own `to_string()` panics on a
/// code it does not know. So the format is read leniently: an unknown or cut-off code (`%Q`,
/// a trailing `%`) is written as the text it is, the way C's `strftime` leaves it, and the
/// rest formats as usual. Writing still goes through `write!`; if chrono were to refuse
/// anyway, the template fails to render with an error naming the format, never a panic.
fn strftime_now(format: String) -> std::result::Result<String, JinjaError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    format_utc(secs, now.subsec_nanos(), &format).ok_or_else(|| {
        JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: the time cannot be formatted with {format:?}"),
        )
    })
}

/// Formats the instant `secs` + `nanos` after the Unix epoch (UTC) with `format`, unknown codes
/// kept as text; `None` when chrono cannot write it (an instant beyond its range).
fn format_utc(secs: i64, nanos: u32, format: &str) -> Option<String> {
    use std::fmt::Write;

    let time = chrono::DateTime::from_timestamp(secs, nanos)?;
    let items = chrono::format::StrftimeItems::new_lenient(format);
    let mut out = String::with_capacity(format.len() + 16);
    write!(out, "{}", time.format_with_items(items)).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::generate::tokenizer::tests::{content, gemma, smollm, tiny_spm};

    fn msgs(turns: &[(&str, &str)]) -> Vec<ChatMessage> {
        turns
            .iter()
            .map(|(role, content)| ChatMessage {
                role: (*role).to_owned(),
                content: (*content).to_owned(),
            })
            .collect()
    }

    fn smollm_template() -> ChatTemplate {
        let m = smollm();
        ChatTemplate::from_gguf(&m.content, "llama", &m.tok).expect("template")
    }

    fn gemma_template() -> ChatTemplate {
        let m = gemma();
        ChatTemplate::from_gguf(&m.content, "gemma3", &m.tok).expect("template")
    }

    // Expected strings checked against transformers' apply_chat_template on the same file.
    #[test]
    fn smollm_renders_its_chatml_template() {
        let t = smollm_template();
        assert_eq!(t.origin, Origin::ModelFile);
        assert_eq!(
            t.render(&msgs(&[("user", "What is hearth?")]), true)
                .expect("render"),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nWhat is hearth?<|im_end|>\n<|im_start|>assistant\n"
        );
        let conv = msgs(&[("system", "Answer briefly."), ("user", "Hi")]);
        assert_eq!(
            t.render(&conv, true).expect("render"),
            "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let conv = msgs(&[
            ("system", "Answer briefly."),
            ("user", "Hi"),
            ("assistant", "Hello!"),
        ]);
        assert_eq!(
            t.render(&conv, false).expect("render"),
            "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n"
        );
        // No BOS in ChatML, and SmolLM2 adds none: the prompt starts with <|im_start|>.
        let text = t.render(&msgs(&[("user", "Hi")]), true).expect("render");
        let ids = smollm().tok.encode(&text).expect("encode");
        assert_eq!(ids[..3], [1, 9690, 198]); // <|im_start|> system \n
    }

    #[test]
    fn gemma_gets_the_builtin_template() {
        let t = gemma_template();
        assert_eq!(t.origin, Origin::BuiltIn("gemma"));
        let conv = msgs(&[
            ("system", "You are terse."),
            ("user", "Hi "),
            ("assistant", "Hello."),
            ("user", "Bye"),
        ]);
        assert_eq!(
            t.render(&conv, true).expect("render"),
            "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n\
             <start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        let text = t.render(&msgs(&[("user", "Hi")]), false).expect("render");
        assert_eq!(text, "<bos><start_of_turn>user\nHi<end_of_turn>\n");
        // The template writes BOS; encoding does not add a second one.
        let ids = gemma().tok.encode(&text).expect("encode");
        assert_eq!(ids[..3], [2, 105, 2364]); // <bos> <start_of_turn> user
        assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 1);
    }

    #[test]
    fn raise_exception_is_invalid_input() {
        let t = gemma_template();
        match t.render(&msgs(&[("user", "a"), ("user", "b")]), true) {
            Err(EngineError::InvalidInput(m)) => {
                assert!(m.starts_with("conversation roles must alternate"), "{m}");
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
        let src = "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok";
        let t = ChatTemplate::from_source(src.to_owned(), &smollm().tok).expect("compile");
        assert_eq!(
            t.render(&msgs(&[("user", "x")]), true).expect("render"),
            "ok"
        );
        match t.render(&msgs(&[("system", "x")]), true) {
            Err(EngineError::InvalidInput(m)) => assert_eq!(m, "System role not supported"),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn broken_templates_are_errors() {
        let tok = &smollm().tok;
        match ChatTemplate::from_source("{% for m in messages %}{{ m.role }}".to_owned(), tok) {
            Err(EngineError::InvalidInput(m)) => {
                assert!(m.contains("syntax error") && m.contains("line 1"), "{m}");
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
        // Fails only when rendered: an error, not a panic.
        let t = ChatTemplate::from_source("{{ messages | no_such_filter }}".to_owned(), tok)
            .and_then(|t| t.render(&msgs(&[("user", "x")]), true));
        assert!(matches!(t, Err(EngineError::InvalidInput(m)) if m.contains("no_such_filter")));
        // A model file whose template does not compile is unsupported, with a way out.
        let bad = content(vec![(
            "tokenizer.chat_template",
            GgufValue::String("{% for %}".to_owned()),
        )]);
        match ChatTemplate::from_gguf(&bad, "llama", tok) {
            Err(EngineError::Unsupported(m)) => assert!(m.contains("supply one"), "{m}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn no_template_and_no_markers_is_unsupported() {
        let c = tiny_spm(&[("a", -1.0)]);
        let tok = GenTokenizer::from_gguf(&c, Path::new("tiny.gguf")).expect("tokenizer");
        match ChatTemplate::from_gguf(&c, "tinyarch", &tok) {
            Err(EngineError::Unsupported(m)) => assert!(m.contains("tinyarch"), "{m}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        // ChatML markers alone select the ChatML fallback.
        let m = smollm();
        let bare = content(vec![]);
        let t = ChatTemplate::from_gguf(&bare, "llama", &m.tok).expect("template");
        assert_eq!(t.origin, Origin::BuiltIn("chatml"));
        assert_eq!(
            t.render(&msgs(&[("user", "Hi")]), true).expect("render"),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_tojson_and_strftime() {
        let src = "{{ bos_token }}|{{ eos_token }}|{{ messages[0].content.strip().upper() }}\
                   |{{ messages[0].content.startswith(' hi') }}|{{ messages[0] | tojson }}\
                   |{{ messages[0].get('role') }}|{{ strftime_now('%Y')|length }}";
        let t = ChatTemplate::from_source(src.to_owned(), &gemma().tok).expect("compile");
        assert_eq!(
            t.render(&msgs(&[("user", " hi there ")]), false)
                .expect("render"),
            "<bos>|<eos>|HI THERE|True|{\"content\": \" hi there \", \"role\": \"user\"}|user|4"
        );
        let t =
            ChatTemplate::from_source("{{ messages | tojson(indent=2) }}".to_owned(), &gemma().tok)
                .expect("compile");
        assert_eq!(
            t.render(&msgs(&[("user", "é")]), false).expect("render"),
            "[\n  {\n    \"content\": \"é\",\n    \"role\": \"user\"\n  }\n]"
        );
        // trim_blocks and lstrip_blocks, as transformers sets them.
        let t = ChatTemplate::from_source(
            "{% for m in messages %}\n    {% if true %}\n{{ m.role }}\n    {% endif %}\n{% endfor %}".to_owned(),
            &gemma().tok,
        )
        .expect("compile");
        assert_eq!(
            t.render(&msgs(&[("user", "x")]), false).expect("render"),
            "user\n"
        );
    }

    #[test]
    fn utc_formatting() {
        let f = |secs, format| format_utc(secs, 0, format).expect("formats");
        assert_eq!(
            f(0, "%Y-%m-%d %H:%M:%S %a %j"),
            "1970-01-01 00:00:00 Thu 001"
        );
        // 2024-02-29 23:59:59 UTC, a leap day.
        assert_eq!(
            f(1_709_251_199, "%d %B %Y %I:%M %p %A %j %y %e %b %h %%"),
            "29 February 2024 11:59 PM Thursday 060 24 29 Feb Feb %"
        );
        assert_eq!(f(951_782_400, "%Y-%m-%d"), "2000-02-29");
        assert_eq!(f(1_709_337_600, "%e|%I %p"), " 2|12 AM");
        assert_eq!(
            f(1_709_251_200, "plain text, no codes"),
            "plain text, no codes"
        );
        assert_eq!(f(1_709_251_200, ""), "");
    }

    /// Codes chrono does not know stay as text, as C's `strftime` leaves them; nothing panics.
    #[test]
    fn unknown_strftime_codes_stay_as_text() {
        let f = |format| format_utc(1_709_251_200, 0, format).expect("formats");
        assert_eq!(f("%d %b %Y %Q"), "01 Mar 2024 %Q");
        assert_eq!(f("%Y%"), "2024%");
        assert_eq!(f("%"), "%");
        assert_eq!(f("%:x %Y"), "%:x 2024");
        assert_eq!(f("%é%Y"), "%é2024");
        // An instant chrono cannot represent is an error, not a panic.
        assert_eq!(format_utc(i64::MAX, 0, "%Y"), None);
        // Through a template: rendering succeeds and keeps the bad code.
        let t = ChatTemplate::from_source(
            "{{ strftime_now('%Q|%Y')[:3] }}|{{ strftime_now('%') }}".to_owned(),
            &gemma().tok,
        )
        .expect("compile");
        assert_eq!(t.render(&[], false).expect("render"), "%Q||%");
    }
}

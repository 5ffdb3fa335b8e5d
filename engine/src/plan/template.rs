//! Input templates: JSON documents with `${...}` references to upstream
//! outputs, parsed once at plan time and rendered cheaply at run time.
//!
//! Syntax, inside any string of a step's `input`, `map`, `when` or the
//! pipeline `output`:
//! - `"${step}"` — the whole output of `step`, keeping its JSON type;
//! - `"${step.field.0.name}"` — a field (or array index) inside it;
//! - `"${item}"`, `"${item.field}"`, `"${index}"` — in a mapped step, the
//!   current element and its position;
//! - `"total: ${report.count}"` — a reference inside other text is
//!   interpolated and must be a string, number, boolean or null;
//! - `$${` writes a literal `${`.
//!
//! A subtree without references is kept as one literal value, so rendering
//! it is a clone.

use std::fmt;

use serde_json::Value;

/// Where a reference points.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// The output of a step (by name until the plan resolves it).
    Step(String),
    /// The current element of a mapped step.
    Item,
    /// The position of the current element of a mapped step.
    Index,
}

/// A parsed `${...}` reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub source: Source,
    pub path: Vec<String>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = match &self.source {
            Source::Step(name) => name.as_str(),
            Source::Item => "item",
            Source::Index => "index",
        };
        write!(f, "${{{head}")?;
        for segment in &self.path {
            write!(f, ".{segment}")?;
        }
        f.write_str("}")
    }
}

/// A piece of an interpolated string.
#[derive(Debug, Clone, PartialEq)]
pub enum TextPart {
    Literal(String),
    Ref(Reference),
}

/// A JSON document with references, ready to render.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// No references inside.
    Literal(Value),
    /// A reference-free list or object kept as its JSON text (see
    /// [`Template::compacted`]).
    Encoded(Box<str>),
    /// A whole-string reference: the referenced value, with its type.
    Ref(Reference),
    /// A string with references inside other text.
    Text(Vec<TextPart>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

/// Looks a reference up while rendering.
pub trait Resolve {
    fn resolve(&self, reference: &Reference) -> Result<Value, String>;
}

impl Template {
    /// Parse a JSON value, finding every reference in its strings.
    pub fn parse(value: &Value) -> Result<Template, String> {
        let template = match value {
            Value::String(s) => parse_string(s)?,
            Value::Array(items) => Template::Array(
                items
                    .iter()
                    .map(Template::parse)
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Template::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Template::parse(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => Template::Literal(other.clone()),
        };
        Ok(template.collapse())
    }

    /// Fold reference-free subtrees back into one literal.
    fn collapse(self) -> Template {
        match self {
            Template::Array(items) if items.iter().all(|t| matches!(t, Template::Literal(_))) => {
                Template::Literal(Value::Array(
                    items.into_iter().map(Template::into_literal).collect(),
                ))
            }
            Template::Object(fields)
                if fields
                    .iter()
                    .all(|(_, t)| matches!(t, Template::Literal(_))) =>
            {
                Template::Literal(Value::Object(
                    fields
                        .into_iter()
                        .map(|(k, t)| (k, t.into_literal()))
                        .collect(),
                ))
            }
            other => other,
        }
    }

    /// The same template, a literal list or object kept as its JSON text.
    ///
    /// A plan holds every step's input for the whole run, and a `Value`
    /// object costs a B-tree node (about 630 bytes) even for one field: a
    /// 100 000-step fan-out's `{ i = N }` inputs took 63 MB as values and
    /// take about 3 MB as text. The text is what the input encodes to, so
    /// a task's literal input is passed on as it is ([`Template::literal_json`]).
    pub fn compacted(self) -> Template {
        match self {
            Template::Literal(value @ (Value::Object(_) | Value::Array(_))) => {
                Template::Encoded(value.to_string().into_boxed_str())
            }
            other => other,
        }
    }

    /// The JSON text of a reference-free template kept as text.
    pub fn literal_json(&self) -> Option<&str> {
        match self {
            Template::Encoded(text) => Some(text),
            _ => None,
        }
    }

    fn into_literal(self) -> Value {
        match self {
            Template::Literal(v) => v,
            _ => unreachable!("collapse only folds literals"),
        }
    }

    /// Every reference, in document order.
    pub fn references(&self) -> Vec<&Reference> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Reference>) {
        match self {
            Template::Literal(_) | Template::Encoded(_) => {}
            Template::Ref(r) => out.push(r),
            Template::Text(parts) => out.extend(parts.iter().filter_map(|p| match p {
                TextPart::Ref(r) => Some(r),
                TextPart::Literal(_) => None,
            })),
            Template::Array(items) => items.iter().for_each(|t| t.collect(out)),
            Template::Object(fields) => fields.iter().for_each(|(_, t)| t.collect(out)),
        }
    }

    /// Produce the document, looking references up with `resolve`.
    pub fn render(&self, resolve: &dyn Resolve) -> Result<Value, String> {
        Ok(match self {
            Template::Literal(v) => v.clone(),
            Template::Encoded(text) => serde_json::from_str(text)
                .map_err(|e| format!("a literal kept as text does not read back: {e}"))?,
            Template::Ref(r) => resolve.resolve(r)?,
            Template::Text(parts) => {
                let mut text = String::new();
                for part in parts {
                    match part {
                        TextPart::Literal(s) => text.push_str(s),
                        TextPart::Ref(r) => match resolve.resolve(r)? {
                            Value::String(s) => text.push_str(&s),
                            v @ (Value::Number(_) | Value::Bool(_) | Value::Null) => {
                                text.push_str(&v.to_string())
                            }
                            _ => {
                                return Err(format!(
                                    "{r} is a list or an object and cannot be placed inside text"
                                ));
                            }
                        },
                    }
                }
                Value::String(text)
            }
            Template::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.render(resolve))
                    .collect::<Result<_, _>>()?,
            ),
            Template::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.render(resolve)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

/// Look `path` up inside `value`: object keys by name, array elements by index.
pub fn lookup<'v>(value: &'v Value, path: &[String]) -> Result<&'v Value, String> {
    let mut current = value;
    for (depth, segment) in path.iter().enumerate() {
        let next = match current {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        current = next.ok_or_else(|| {
            let at = if depth == 0 {
                "the output".to_owned()
            } else {
                format!("`{}`", path[..depth].join("."))
            };
            match current {
                Value::Object(map) => {
                    let keys: Vec<&str> = map.keys().map(String::as_str).take(10).collect();
                    format!(
                        "{at} has no field `{segment}` (it has: {})",
                        keys.join(", ")
                    )
                }
                Value::Array(items) => format!(
                    "{at} is a list of {} and has no element `{segment}`",
                    items.len()
                ),
                other => format!("{at} is {}, not an object or a list", json_type(other)),
            }
        })?;
    }
    Ok(current)
}

pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Is a value "true" for a `when` condition? False: null, false, 0, "",
/// empty list, empty object.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// Parse the inside of `${...}`.
pub fn parse_reference(inner: &str) -> Result<Reference, String> {
    let mut segments = inner.split('.');
    let head = segments.next().unwrap_or_default();
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !valid(head) {
        return Err(format!(
            "`${{{inner}}}` is not a reference; write ${{step}} or ${{step.field}}"
        ));
    }
    let path: Vec<String> = segments.map(str::to_owned).collect();
    if let Some(bad) = path.iter().find(|s| !valid(s)) {
        return Err(format!(
            "`${{{inner}}}` has an empty or invalid field name {bad:?}"
        ));
    }
    let source = match head {
        "item" => Source::Item,
        "index" if path.is_empty() => Source::Index,
        "index" => return Err("`${index}` is a number and has no fields".into()),
        name => Source::Step(name.to_owned()),
    };
    Ok(Reference { source, path })
}

fn parse_string(s: &str) -> Result<Template, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            literal.push_str(&rest[..pos - 1]);
            literal.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        literal.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in {s:?}"))?;
        if !literal.is_empty() {
            parts.push(TextPart::Literal(std::mem::take(&mut literal)));
        }
        parts.push(TextPart::Ref(parse_reference(&after[..end])?));
        rest = &after[end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(TextPart::Literal(literal));
    }
    Ok(match parts.as_slice() {
        [] => Template::Literal(Value::String(String::new())),
        [TextPart::Literal(text)] => Template::Literal(Value::String(text.clone())),
        [TextPart::Ref(r)] => Template::Ref(r.clone()),
        _ => Template::Text(parts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Outputs(Value);
    impl Resolve for Outputs {
        fn resolve(&self, r: &Reference) -> Result<Value, String> {
            let Source::Step(name) = &r.source else {
                return Ok(json!("ITEM"));
            };
            lookup(&self.0[name.as_str()], &r.path).cloned()
        }
    }

    #[test]
    fn a_compacted_literal_renders_the_same_document_and_keeps_its_encoding() {
        let doc = json!({"z": [1, {"b": true, "a": null}], "a": "text", "n": 1.5});
        let literal = Template::parse(&doc).unwrap();
        let compact = literal.clone().compacted();
        assert_eq!(compact.literal_json(), Some(doc.to_string().as_str()));
        let none = Outputs(json!({}));
        assert_eq!(
            compact.render(&none).unwrap(),
            literal.render(&none).unwrap()
        );
        assert!(compact.references().is_empty());
        // Templates with references, and scalars, stay as they are.
        let with_ref = Template::parse(&json!({"a": "${x.y}"})).unwrap();
        assert_eq!(with_ref.clone().compacted(), with_ref);
        let scalar = Template::parse(&json!(3)).unwrap();
        assert_eq!(scalar.clone().compacted(), scalar);
    }

    #[test]
    fn whole_string_references_keep_their_type() {
        let t = Template::parse(&json!({"rows": "${parse.rows}", "n": 3})).unwrap();
        let out = t
            .render(&Outputs(json!({"parse": {"rows": [1, 2]}})))
            .unwrap();
        assert_eq!(out, json!({"rows": [1, 2], "n": 3}));
    }

    #[test]
    fn references_inside_text_are_interpolated() {
        let t = Template::parse(&json!("n=${a.n}, s=${a.s}")).unwrap();
        assert_eq!(
            t.render(&Outputs(json!({"a": {"n": 2, "s": "x"}})))
                .unwrap(),
            json!("n=2, s=x")
        );
        let err = Template::parse(&json!("x ${a}"))
            .unwrap()
            .render(&Outputs(json!({"a": [1]})))
            .unwrap_err();
        assert!(err.contains("inside text"), "{err}");
    }

    #[test]
    fn literal_subtrees_collapse_and_escapes_work() {
        assert_eq!(
            Template::parse(&json!({"a": [1, "b"]})).unwrap(),
            Template::Literal(json!({"a": [1, "b"]}))
        );
        assert_eq!(
            Template::parse(&json!("cost: $${price}")).unwrap(),
            Template::Literal(json!("cost: ${price}"))
        );
    }

    #[test]
    fn references_are_listed_in_order() {
        let t = Template::parse(&json!({"a": "${x.f}", "b": ["${y}", "${item.z}"]})).unwrap();
        let refs: Vec<String> = t.references().iter().map(|r| r.to_string()).collect();
        assert_eq!(refs, ["${x.f}", "${y}", "${item.z}"]);
    }

    #[test]
    fn bad_references_say_how_to_write_one() {
        assert!(
            Template::parse(&json!("${}"))
                .unwrap_err()
                .contains("${step.field}")
        );
        assert!(
            Template::parse(&json!("${a..b}"))
                .unwrap_err()
                .contains("invalid field")
        );
        assert!(
            Template::parse(&json!("${a"))
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(Template::parse(&json!("${index.x}")).is_err());
    }

    #[test]
    fn lookup_errors_list_what_exists() {
        let err = lookup(&json!({"rows": [], "count": 1}), &["rowz".into()]).unwrap_err();
        assert!(
            err.contains("no field `rowz`") && err.contains("count, rows"),
            "{err}"
        );
        assert_eq!(
            lookup(&json!({"a": [5, 6]}), &["a".into(), "1".into()]).unwrap(),
            &json!(6)
        );
    }

    #[test]
    fn truthiness() {
        for v in [
            json!(null),
            json!(false),
            json!(0),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [
            json!(true),
            json!(1),
            json!("x"),
            json!([0]),
            json!({"a": 0}),
        ] {
            assert!(truthy(&v), "{v}");
        }
    }
}

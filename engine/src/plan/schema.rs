//! Plan-time checks against the JSON Schemas tasks declare in `describe`.
//!
//! Two questions, answered before anything runs:
//! - does `${up.a.b}` name a field that `up`'s output schema has?
//! - does a step's input template fit its input schema (required fields
//!   present, no unknown fields where the schema forbids them, literal and
//!   referenced values of a compatible type)?
//!
//! This is a structural compatibility check between schemas, not a full
//! JSON Schema validator: it understands `type`, `properties`, `required`,
//! `additionalProperties: false`, `items`, local `$ref`s and nullable
//! `anyOf`/`oneOf`, which is what schemars emits. Anything it does not
//! understand is accepted, never rejected.

use serde_json::Value;

use super::template::{Reference, Template, json_type};

/// The result of following a path through a schema.
#[derive(Debug, PartialEq)]
pub enum Lookup<'s> {
    /// The schema for the value at the path.
    Found(&'s Value),
    /// The schema does not say (open object, `{}`, a union we do not model).
    Unknown,
    /// The schema rules the path out.
    Missing(String),
}

/// Follow `$ref`s of the form `#/$defs/Name` or `#/definitions/Name`.
fn resolve<'s>(root: &'s Value, mut schema: &'s Value) -> &'s Value {
    for _ in 0..32 {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            break;
        };
        let Some(pointer) = reference.strip_prefix('#') else {
            break;
        };
        match root.pointer(pointer) {
            Some(target) => schema = target,
            None => break,
        }
    }
    schema
}

/// Strip a nullable union (`anyOf: [X, {type: null}]`) down to X.
fn non_null<'s>(root: &'s Value, schema: &'s Value) -> Option<&'s Value> {
    let schema = resolve(root, schema);
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let rest: Vec<&Value> = options
                .iter()
                .map(|o| resolve(root, o))
                .filter(|o| o.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            return if rest.len() == 1 { Some(rest[0]) } else { None };
        }
    }
    Some(schema)
}

/// The schema of `path` inside a value described by `root`.
pub fn follow<'s>(root: &'s Value, path: &[String]) -> Lookup<'s> {
    follow_at(root, root, path)
}

/// Like [`follow`], starting from a sub-schema `start` of `root`.
pub fn follow_at<'s>(root: &'s Value, start: &'s Value, path: &[String]) -> Lookup<'s> {
    let mut schema = start;
    for (depth, segment) in path.iter().enumerate() {
        let Some(current) = non_null(root, schema) else {
            return Lookup::Unknown;
        };
        let at = if depth == 0 {
            "the output".to_owned()
        } else {
            format!("`{}`", path[..depth].join("."))
        };
        if let Some(properties) = current.get("properties").and_then(Value::as_object) {
            if let Some(next) = properties.get(segment) {
                schema = next;
                continue;
            }
            if current.get("additionalProperties") == Some(&Value::Bool(false))
                || current.get("additionalProperties").is_none()
            {
                let names: Vec<&str> = properties.keys().map(String::as_str).collect();
                return Lookup::Missing(format!(
                    "{at} has no field `{segment}` (its fields: {})",
                    names.join(", ")
                ));
            }
            return Lookup::Unknown;
        }
        if let Some(items) = current.get("items") {
            if segment.parse::<usize>().is_ok() {
                schema = items;
                continue;
            }
            return Lookup::Missing(format!(
                "{at} is a list; use a number to pick an element, not `{segment}`"
            ));
        }
        if let Some(kind) = current.get("type").and_then(Value::as_str)
            && !matches!(kind, "object" | "array")
        {
            return Lookup::Missing(format!(
                "{at} is of type {kind} and has no field `{segment}`"
            ));
        }
        return Lookup::Unknown;
    }
    Lookup::Found(schema)
}

/// The schema of one element of a list described by `schema`, if known.
pub fn items<'s>(root: &'s Value, schema: &'s Value) -> Option<&'s Value> {
    non_null(root, schema)?.get("items")
}

/// The JSON types a schema allows, or `None` when it does not say.
pub fn types(root: &Value, schema: &Value) -> Option<Vec<String>> {
    let schema = resolve(root, schema);
    match schema.get("type") {
        Some(Value::String(t)) => Some(vec![t.clone()]),
        Some(Value::Array(ts)) => Some(
            ts.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => {
            for key in ["anyOf", "oneOf"] {
                if let Some(options) = schema.get(key).and_then(Value::as_array) {
                    let mut all = Vec::new();
                    for option in options {
                        all.extend(types(root, option)?);
                    }
                    return Some(all);
                }
            }
            None
        }
    }
}

fn value_fits(kind: &str, value: &Value) -> bool {
    match (kind, value) {
        ("null", Value::Null) | ("boolean", Value::Bool(_)) | ("string", Value::String(_)) => true,
        ("array", Value::Array(_)) | ("object", Value::Object(_)) => true,
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

fn types_overlap(want: &[String], have: &[String]) -> bool {
    have.iter().any(|h| {
        want.iter().any(|w| {
            w == h || (w == "number" && h == "integer") || (w == "integer" && h == "number")
        })
    })
}

/// Where a referenced value's schema comes from while checking an input.
pub trait RefSchemas {
    /// The schema (and its root, for `$ref`s) of the referenced value, if known.
    fn schema_of(&self, reference: &Reference) -> Option<(&Value, &Value)>;
}

/// Check an input template against an input schema; returns every problem,
/// each naming the field path.
pub fn check_input(template: &Template, root: &Value, refs: &dyn RefSchemas) -> Vec<String> {
    let mut problems = Vec::new();
    check(template, root, root, "input", refs, &mut problems);
    problems
}

fn check(
    template: &Template,
    root: &Value,
    schema: &Value,
    at: &str,
    refs: &dyn RefSchemas,
    out: &mut Vec<String>,
) {
    let want = types(root, schema);
    match template {
        Template::Encoded(text) => match serde_json::from_str(text) {
            Ok(value) => check(&Template::Literal(value), root, schema, at, refs, out),
            Err(e) => out.push(format!("{at} does not read back: {e}")),
        },
        Template::Literal(value) => {
            if let Some(want) = &want
                && !want.iter().any(|k| value_fits(k, value))
            {
                out.push(format!(
                    "{at} is {} but the task expects {}",
                    json_type(value),
                    want.join(" or ")
                ));
                return;
            }
            if let Value::Object(map) = value {
                let fields: Vec<(String, Template)> = map
                    .iter()
                    .map(|(k, v)| (k.clone(), Template::Literal(v.clone())))
                    .collect();
                check_object(&fields, root, schema, at, refs, out);
            }
        }
        Template::Ref(reference) => {
            if let (Some(want), Some((up_root, up_schema))) = (&want, refs.schema_of(reference))
                && let Some(have) = types(up_root, up_schema)
                && !types_overlap(want, &have)
            {
                out.push(format!(
                    "{at} comes from {reference}, which is {} but the task expects {}",
                    have.join(" or "),
                    want.join(" or ")
                ));
            }
        }
        Template::Text(_) => {
            if let Some(want) = &want
                && !want.iter().any(|k| k == "string")
            {
                out.push(format!(
                    "{at} is text but the task expects {}",
                    want.join(" or ")
                ));
            }
        }
        Template::Array(items) => {
            if let Some(want) = &want
                && !want.iter().any(|k| k == "array")
            {
                out.push(format!(
                    "{at} is a list but the task expects {}",
                    want.join(" or ")
                ));
                return;
            }
            if let Some(item_schema) = self::items(root, schema) {
                for (i, item) in items.iter().enumerate() {
                    check(item, root, item_schema, &format!("{at}[{i}]"), refs, out);
                }
            }
        }
        Template::Object(fields) => {
            if let Some(want) = &want
                && !want.iter().any(|k| k == "object")
            {
                out.push(format!(
                    "{at} is an object but the task expects {}",
                    want.join(" or ")
                ));
                return;
            }
            check_object(fields, root, schema, at, refs, out);
        }
    }
}

fn check_object(
    fields: &[(String, Template)],
    root: &Value,
    schema: &Value,
    at: &str,
    refs: &dyn RefSchemas,
    out: &mut Vec<String>,
) {
    let Some(schema) = non_null(root, schema) else {
        return;
    };
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !fields.iter().any(|(k, _)| k == name) {
                out.push(format!("{at} is missing the required field `{name}`"));
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    for (name, value) in fields {
        match properties.and_then(|p| p.get(name)) {
            Some(field_schema) => check(
                value,
                root,
                field_schema,
                &format!("{at}.{name}"),
                refs,
                out,
            ),
            None if closed => {
                let known: Vec<&str> = properties
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                out.push(format!(
                    "{at} has the field `{name}`, which the task does not accept (it accepts: {})",
                    known.join(", ")
                ));
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::template::Template;
    use serde_json::json;

    fn output_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "rows": {"type": "array", "items": {"$ref": "#/$defs/Row"}},
                "count": {"type": "integer"},
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}
            },
            "required": ["rows", "count"],
            "$defs": {"Row": {"type": "object", "properties": {"region": {"type": "string"}}}}
        })
    }

    #[test]
    fn follows_properties_items_and_refs() {
        let s = output_schema();
        assert_eq!(
            follow(&s, &["count".into()]),
            Lookup::Found(&json!({"type": "integer"}))
        );
        assert!(matches!(
            follow(&s, &["rows".into(), "0".into(), "region".into()]),
            Lookup::Found(_)
        ));
        let Lookup::Missing(why) = follow(&s, &["rowz".into()]) else {
            panic!()
        };
        assert!(
            why.contains("no field `rowz`") && why.contains("rows"),
            "{why}"
        );
        let Lookup::Missing(why) = follow(&s, &["count".into(), "x".into()]) else {
            panic!()
        };
        assert!(why.contains("integer"), "{why}");
        assert_eq!(follow(&json!({}), &["anything".into()]), Lookup::Unknown);
    }

    struct NoRefs;
    impl RefSchemas for NoRefs {
        fn schema_of(&self, _: &Reference) -> Option<(&Value, &Value)> {
            None
        }
    }

    fn input_schema() -> Value {
        json!({
            "type": "object",
            "properties": {"text": {"type": "string"}, "top": {"type": "integer"}},
            "required": ["text"],
            "additionalProperties": false
        })
    }

    #[test]
    fn literal_inputs_are_checked_for_required_unknown_and_types() {
        let s = input_schema();
        assert!(
            check_input(
                &Template::parse(&json!({"text": "a", "top": 3})).unwrap(),
                &s,
                &NoRefs
            )
            .is_empty()
        );
        let problems = check_input(
            &Template::parse(&json!({"top": 2.5, "extra": 1})).unwrap(),
            &s,
            &NoRefs,
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("missing the required field `text`"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("input.top is a number but the task expects integer"))
        );
        assert!(problems.iter().any(|p| p.contains("`extra`")));
    }

    #[test]
    fn referenced_values_are_type_checked_against_upstream_schemas() {
        struct Up(Value);
        impl RefSchemas for Up {
            fn schema_of(&self, _: &Reference) -> Option<(&Value, &Value)> {
                Some((&self.0, &self.0["properties"]["rows"]))
            }
        }
        let up = Up(output_schema());
        let problems = check_input(
            &Template::parse(&json!({"text": "${parse.rows}"})).unwrap(),
            &input_schema(),
            &up,
        );
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("which is array but the task expects string"),
            "{}",
            problems[0]
        );
    }
}

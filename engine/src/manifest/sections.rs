//! Parsing a manifest a few `[steps.NAME]` tables at a time, so that a huge
//! one never exists as a whole-document TOML tree.
//!
//! `toml::from_str` lexes the whole text into a token vector and builds a
//! spanned tree of it before deserializing anything: on a generated
//! 100 000-step manifest (13.8 MB) that alone peaks near 290 MB, more than the
//! manifest and the plan together. Here the text is cut at its top-level
//! table headers by the TOML lexer (which knows strings, multi-line strings
//! and comments), the step tables are parsed a batch of about 16 KiB at a
//! time into [`StepSpec`]s, each batch's tree dropped before the next, and
//! everything that is not a step (the root keys, `[defaults]`, …) is parsed
//! together as one small document.
//!
//! This is an optimisation, never an authority. It gives up (`None`) on any
//! document not of the simple shape — a `[steps]` or `[[…]]` header, a root
//! key starting with `steps`, a step's tables not written together, a step
//! written twice, unbalanced brackets, a piece toml rejects — and the caller
//! then parses the whole document, so every error message is toml's own,
//! with its line and column. Invariant: when it returns a manifest, the
//! whole-document parse returns the same one (tested against it below).

use std::ops::Range;

use indexmap::IndexMap;
use serde::Deserialize;
use toml_parser::Source;
use toml_parser::lexer::{Lexer, Token, TokenKind};

use super::{Manifest, NameHasher, StepSpec};

/// Consecutive step tables are parsed this many bytes at a time: one toml
/// call per step spends more on setting up and freeing its tree than on
/// parsing (a 100 000-step chain parses in 0.57 s a step at a time, 0.35 s
/// in batches), and the tree of a batch is still small (~350 KB). Tiny in
/// tests, so that small manifests cross batch boundaries.
const BATCH_BYTES: usize = if cfg!(test) { 200 } else { 16 << 10 };

/// Parse `text` table by table; `None` means "parse it whole instead".
pub(super) fn parse(text: &str) -> Option<Manifest> {
    let mut head = String::new();
    let mut steps: IndexMap<String, Box<StepSpec>, NameHasher> = IndexMap::default();
    let mut batch = Batch::default();
    for section in Sections::new(text) {
        match section.ok()? {
            Section::Other(range) => {
                batch.parse_into(text, &mut steps)?;
                head.push_str(&text[range]);
                // The next section must start on a line of its own.
                if !head.ends_with('\n') {
                    head.push('\n');
                }
            }
            Section::Step { name, range } => {
                // toml rejects the second table; let it say so, with the
                // line. (A repeat within one batch, toml rejects there.)
                if steps.contains_key(&name) {
                    return None;
                }
                batch.add(name, range);
                if batch.range.len() >= BATCH_BYTES {
                    batch.parse_into(text, &mut steps)?;
                }
            }
        }
    }
    batch.parse_into(text, &mut steps)?;
    if steps.is_empty() {
        return None;
    }
    // The head is read as a `Manifest` with an empty `[steps]` table, so its
    // fields and their checks stay `Manifest`'s own. The scan guarantees the
    // head says nothing else about `steps`.
    head.push_str("[steps]\n");
    let mut manifest: Manifest = toml::from_str(&head).ok()?;
    manifest.steps = steps;
    Some(manifest)
}

/// Step tables written one after another, not yet parsed.
#[derive(Default)]
struct Batch {
    names: Vec<String>,
    range: Range<usize>,
}

impl Batch {
    /// Sections come in text order, and only steps are added, so the batch
    /// stays one run of text (a non-step section parses it first).
    fn add(&mut self, name: String, range: Range<usize>) {
        if self.names.is_empty() {
            self.range = range;
        } else {
            self.range.end = range.end;
        }
        self.names.push(name);
    }

    /// Parse the batch as a document of its own into `steps`; `None` if
    /// toml rejects it or finds other steps than the scan did.
    fn parse_into(
        &mut self,
        text: &str,
        steps: &mut IndexMap<String, Box<StepSpec>, NameHasher>,
    ) -> Option<()> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Piece {
            steps: IndexMap<String, Box<StepSpec>, NameHasher>,
        }
        if self.names.is_empty() {
            return Some(());
        }
        let piece: Piece = toml::from_str(&text[self.range.clone()]).ok()?;
        if piece.steps.len() != self.names.len()
            || !piece.steps.keys().zip(&self.names).all(|(a, b)| a == b)
        {
            return None;
        }
        steps.extend(piece.steps);
        self.names.clear();
        Some(())
    }
}

/// A top-level part of the document: a byte range of its text.
#[derive(Debug, PartialEq)]
enum Section {
    /// The root keys before the first header, or a table that is not a step.
    Other(Range<usize>),
    /// `[steps.NAME]` up to the next top-level header that is not one of
    /// its own sub-tables.
    Step { name: String, range: Range<usize> },
}

/// The document is not of the shape [`Sections`] splits; parse it whole.
#[derive(Debug, PartialEq)]
struct Unusual;

/// What the section being scanned is.
enum Open {
    Root,
    Other,
    Step(String),
}

/// The sections of a document, in order, found by one pass of the lexer.
struct Sections<'i> {
    source: Source<'i>,
    tokens: std::iter::Peekable<Lexer<'i>>,
    open: Open,
    /// Where the open section starts.
    start: usize,
    /// Brackets and braces open in the current value: a `[` only starts a
    /// header when this is zero (a multi-line array may put one first on a
    /// line).
    depth: usize,
    /// Nothing but whitespace and comments since the last top-level newline.
    line_start: bool,
    done: bool,
}

impl<'i> Sections<'i> {
    fn new(text: &'i str) -> Self {
        let source = Source::new(text);
        Sections {
            source,
            tokens: source.lex().peekable(),
            open: Open::Root,
            start: 0,
            depth: 0,
            line_start: true,
            done: false,
        }
    }

    /// Close the open section at `end` and open `next` there.
    fn cut(&mut self, end: usize, next: Open) -> Section {
        let range = self.start..end;
        self.start = end;
        match std::mem::replace(&mut self.open, next) {
            Open::Root | Open::Other => Section::Other(range),
            Open::Step(name) => Section::Step { name, range },
        }
    }

    /// Scan to the end of the open section.
    fn scan(&mut self) -> Result<Section, Unusual> {
        while let Some(token) = self.tokens.next() {
            let kind = token.kind();
            if kind == TokenKind::Eof {
                if self.depth != 0 {
                    return Err(Unusual);
                }
                let end = self.source.input().len();
                return Ok(self.cut(end, Open::Other));
            }
            if !self.line_start {
                match kind {
                    TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => self.depth += 1,
                    TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                        self.depth = self.depth.checked_sub(1).ok_or(Unusual)?;
                    }
                    TokenKind::Newline if self.depth == 0 => self.line_start = true,
                    _ => {}
                }
                continue;
            }
            match kind {
                TokenKind::Whitespace | TokenKind::Comment | TokenKind::Newline => {}
                TokenKind::LeftSquareBracket => {
                    let keys = self.header()?;
                    self.line_start = false;
                    let at = token.span().start();
                    match keys.as_slice() {
                        [first, ..] if first != "steps" => return Ok(self.cut(at, Open::Other)),
                        [_, name] => {
                            let next = Open::Step(name.clone());
                            return Ok(self.cut(at, next));
                        }
                        // A sub-table of the step just opened stays with it;
                        // one of any other step would split that step in two.
                        [_, name, _, ..] if self.is_open(name) => {}
                        _ => return Err(Unusual),
                    }
                }
                TokenKind::Atom | TokenKind::BasicString | TokenKind::LiteralString => {
                    // A root key `steps` (or `steps.x.…`) would mix steps into the head.
                    if matches!(self.open, Open::Root) && self.decode_key(token)? == "steps" {
                        return Err(Unusual);
                    }
                    self.line_start = false;
                }
                _ => return Err(Unusual),
            }
        }
        // The lexer always ends with `Eof`; without it the text was not all seen.
        Err(Unusual)
    }

    /// The keys of a table header whose `[` was just read, through the line's end.
    fn header(&mut self) -> Result<Vec<String>, Unusual> {
        // `[[…]]`: an array of tables, which a manifest never has.
        if self.peek_kind() == Some(TokenKind::LeftSquareBracket) {
            return Err(Unusual);
        }
        let mut keys = Vec::new();
        loop {
            self.skip_whitespace();
            let key = self.tokens.next().ok_or(Unusual)?;
            match key.kind() {
                TokenKind::Atom | TokenKind::BasicString | TokenKind::LiteralString => {
                    keys.push(self.decode_key(key)?);
                }
                _ => return Err(Unusual),
            }
            self.skip_whitespace();
            match self.tokens.next().map(|t| t.kind()) {
                Some(TokenKind::Dot) => {}
                Some(TokenKind::RightSquareBracket) => break,
                _ => return Err(Unusual),
            }
        }
        self.skip_whitespace();
        if self.peek_kind() == Some(TokenKind::Comment) {
            self.tokens.next();
        }
        match self.peek_kind() {
            Some(TokenKind::Newline | TokenKind::Eof) => Ok(keys),
            _ => Err(Unusual),
        }
    }

    /// Whether the open section is the step `name`.
    fn is_open(&self, name: &str) -> bool {
        matches!(&self.open, Open::Step(open) if open == name)
    }

    fn decode_key(&self, token: Token) -> Result<String, Unusual> {
        let raw = self.source.get(token).ok_or(Unusual)?;
        let mut key = String::new();
        let mut error = None;
        raw.decode_key(&mut key, &mut error);
        match error {
            None => Ok(key),
            Some(_) => Err(Unusual),
        }
    }

    fn peek_kind(&mut self) -> Option<TokenKind> {
        self.tokens.peek().map(Token::kind)
    }

    fn skip_whitespace(&mut self) {
        while self.peek_kind() == Some(TokenKind::Whitespace) {
            self.tokens.next();
        }
    }
}

impl Iterator for Sections<'_> {
    type Item = Result<Section, Unusual>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let section = self.scan();
        // After the last section (cut at the end) or the first surprise
        // there is nothing more.
        if section.is_err() || self.start == self.source.input().len() {
            self.done = true;
        }
        Some(section)
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_whole;
    use super::*;
    use proptest::prelude::*;

    /// The sections of `text` as `(kind, text)` pairs, or `Err` if it is unusual.
    fn split(text: &str) -> Result<Vec<(String, &str)>, Unusual> {
        Sections::new(text)
            .map(|section| {
                Ok(match section? {
                    Section::Other(range) => ("other".to_owned(), &text[range]),
                    Section::Step { name, range } => (format!("step {name}"), &text[range]),
                })
            })
            .collect()
    }

    /// Both parses of `text`: the piecewise one must agree with the whole one
    /// whenever it gives an answer.
    fn assert_agrees(text: &str) -> Option<String> {
        let whole = parse_whole(text).map(|m| format!("{m:#?}"));
        let pieces = parse(text).map(|m| format!("{m:#?}"));
        if let Some(pieces) = &pieces {
            assert_eq!(
                Ok(pieces),
                whole.as_ref(),
                "the piecewise parse differs from the whole parse of:\n{text}"
            );
        }
        let public = Manifest::parse(text.as_bytes()).map(|m| format!("{m:#?}"));
        assert_eq!(
            public, whole,
            "Manifest::parse differs from the whole parse of:\n{text}"
        );
        pieces
    }

    #[test]
    fn cuts_at_top_level_headers_only() {
        let text = "name = \"p\" # [steps.no]\n\
                    [steps.a]\n\
                    component = \"a\"\n\
                    input = [\n[1, 2],\n{ x = \"\"\"\n[steps.no]\n\"\"\" },\n]\n\
                    # [steps.no]\n\
                    \t[ steps . \"b c\" ] # comment\n\
                    component = 'b'\n\
                    [steps.\"b c\".grants]\n\
                    env = [\"X\"]\n\
                    [defaults]\n\
                    fuel = 1";
        let sections = split(text).expect("a simple document");
        let kinds: Vec<&str> = sections.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["other", "step a", "step b c", "other"]);
        assert!(
            sections[1].1.starts_with("[steps.a]\n")
                && sections[1].1.ends_with("]\n# [steps.no]\n\t")
        );
        assert!(sections[2].1.ends_with("env = [\"X\"]\n"));
        assert_eq!(sections[3].1, "[defaults]\nfuel = 1");
        assert_eq!(
            sections.iter().map(|(_, t)| *t).collect::<String>(),
            text,
            "the sections cover the text, in order"
        );
    }

    #[test]
    fn gives_up_on_documents_not_of_the_simple_shape() {
        for text in [
            "name = \"p\"\n[steps]\na.component = \"a\"\n",
            "name = \"p\"\n[[steps.a]]\ncomponent = \"a\"\n",
            "name = \"p\"\nsteps.a.component = \"a\"\n",
            "name = \"p\"\n\"steps\" = { a = { component = \"a\" } }\n",
            "name = \"p\"\n[steps.a]\ncomponent = \"a\"\n[steps.b]\ncomponent = \"b\"\n[steps.a.grants]\nclock = true\n",
            "name = \"p\"\nx = ]\n[steps.a]\ncomponent = \"a\"\n",
            "name = \"p\"\nx = [\n[steps.a]\ncomponent = \"a\"\n",
            "name = \"p\"\n[steps.a] component = \"a\"\n",
            "name = \"p\"\n[steps.a\ncomponent = \"a\"\n",
        ] {
            assert_eq!(split(text).err(), Some(Unusual), "{text}");
            assert_eq!(assert_agrees(text), None, "{text}");
        }
    }

    #[test]
    fn every_error_is_the_whole_parse_error_with_its_line() {
        for (text, expected) in [
            (
                "name = \"p\"\n[steps.a]\ncomponent = \"a\"\n[steps.a]\ncomponent = \"b\"\n",
                "line 4, column 8: duplicate key",
            ),
            (
                "name = \"p\"\n[steps.a]\ncomponent = \"a\"\n[steps.b]\ncomponent = \"b\"\ntimout = \"1s\"\n",
                "line 6, column 1: unknown field `timout`",
            ),
            (
                "name = \"p\"\n[steps.a]\ncomponent = \"a\"\n[steps.b]\ninput = 1\n",
                "line 4, column 1: missing field `component`",
            ),
            (
                "nam = \"p\"\n[steps.a]\ncomponent = \"a\"\n",
                "line 1, column 1: unknown field `nam`",
            ),
            (
                "[steps.a]\ncomponent = \"a\"\n",
                "line 1, column 1: missing field `name`",
            ),
            (
                "name = \"p\"\n[steps.a]\ncomponent = \"a\"\n[defaults]\nfuel = \"x\"\n",
                "line 5, column 8: invalid type: string \"x\", expected a whole number of fuel units",
            ),
        ] {
            assert_eq!(parse(text).map(|_| ()), None, "{text}");
            let err = Manifest::parse(text.as_bytes()).expect_err(text);
            assert!(
                err.starts_with(expected),
                "{text}\ngave: {err}\nexpected: {expected}…"
            );
            assert_agrees(text);
        }
    }

    #[test]
    fn the_fuzz_corpus_parses_the_same_both_ways() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus/manifests");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("the corpus exists") {
            let path = entry.expect("a corpus entry").path();
            let text = std::fs::read_to_string(&path).expect("corpus files are UTF-8");
            let pieces = assert_agrees(&text);
            assert!(
                pieces.is_some(),
                "{} should take the piecewise path",
                path.display()
            );
            // The same text with Windows line endings and a byte-order mark.
            let crlf = format!("\u{feff}{}", text.replace('\n', "\r\n"));
            assert!(
                assert_agrees(&crlf).is_some(),
                "{} with CRLF",
                path.display()
            );
            seen += 1;
        }
        assert!(seen >= 3, "the corpus has {seen} manifests");
    }

    /// Key spellings for a generated step: bare, quoted, literal.
    const NAMES: [&str; 6] = ["a", "b-1", "\"c\"", "'d'", "\"e f\"", "item"];

    /// One generated step table (with the name it is written under).
    fn step() -> impl Strategy<Value = (usize, String)> {
        (
            0..NAMES.len(),
            prop_oneof![
                Just(String::new()),
                Just("input = { i = 1, prev = \"${a.i}\" }\n".to_owned()),
                Just(
                    "input = [\n  [1, 2], # [steps.x]\n  { k = '''\n[steps.y]''' },\n]\n"
                        .to_owned()
                ),
                Just("input.x.y = 1.5\ninput.z = 1979-05-27T07:32:00Z\n".to_owned()),
                Just("[steps.NAME.input]\nnested = { deep = [[], {}] }\n".to_owned()),
            ],
            prop_oneof![
                Just(String::new()),
                Just("after = [\"a\"]\nretry = { attempts = 2 }\n".to_owned()),
                Just("[steps.NAME.grants]\nenv = [\"LANG\"]\nclock = true\n".to_owned()),
                Just("when = \"\"\"\n[steps.z]\n\"\"\"\n".to_owned()),
            ],
        )
            .prop_map(|(name, input, more)| {
                let key = NAMES[name];
                let mut text =
                    format!("[steps.{key}]\ncomponent = \"c{name}.wasm\"\n{input}{more}");
                text = text.replace("NAME", key);
                (name, text)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Generated manifests: the piecewise parse is taken whenever the
        /// document is valid with distinct step names, and always agrees.
        #[test]
        fn generated_manifests_parse_the_same_both_ways(
            steps in proptest::collection::vec(step(), 1..6),
            defaults_at in 0usize..7,
            crlf in any::<bool>(),
        ) {
            let mut text = "# generated\nname = \"g\"\noutput = \"${a}\"\n".to_owned();
            let mut names = std::collections::HashSet::new();
            let mut distinct = true;
            for (i, (name, step)) in steps.iter().enumerate() {
                if i == defaults_at {
                    text.push_str("[defaults]\ntimeout = \"1s\"\n[defaults.retry]\nattempts = 3\n");
                }
                distinct &= names.insert(name);
                text.push_str(step);
            }
            if crlf {
                text = text.replace('\n', "\r\n");
            }
            let pieces = assert_agrees(&text);
            prop_assert_eq!(pieces.is_some(), distinct, "{}", text);
        }

        /// Mutated corpus manifests: whatever the damage, `Manifest::parse`
        /// answers exactly as the whole parse does (same manifest or same
        /// error, line and column).
        #[test]
        fn mutated_manifests_parse_the_same_both_ways(
            seed in 0usize..3,
            flips in proptest::collection::vec((any::<usize>(), prop_oneof![
                Just(b'['), Just(b']'), Just(b'\n'), Just(b'"'), Just(b'#'), Just(b'.'), Just(b'{'), any::<u8>(),
            ]), 0..6),
        ) {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus/manifests");
            let mut paths: Vec<_> = std::fs::read_dir(dir)
                .expect("the corpus exists")
                .map(|e| e.expect("a corpus entry").path())
                .collect();
            paths.sort();
            let mut bytes = std::fs::read(&paths[seed % paths.len()]).expect("a corpus file");
            for (at, value) in flips {
                let len = bytes.len();
                bytes[at % len] = value;
            }
            if let Ok(text) = std::str::from_utf8(&bytes) {
                assert_agrees(text);
            }
        }
    }
}

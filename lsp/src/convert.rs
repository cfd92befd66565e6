//! Between `lang`'s byte offsets and plain data and the protocol's UTF-16 positions and
//! types. Nothing here decides anything; it translates.

use nabla_lang::diag::{Diagnostic, Severity};
use nabla_lang::ide::{CompletionKind, SymbolKind, TokenClass};
use tower_lsp_server::ls_types as lsp;

/// Line starts of a text, for offset ↔ position conversion (UTF-16 columns, as the
/// protocol's default encoding).
pub struct LineIndex<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    pub fn new(text: &'t str) -> LineIndex<'t> {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// The position of a byte offset (an offset inside a character counts as that
    /// character's start; past the end is the end).
    pub fn position(&self, offset: usize) -> lsp::Position {
        let offset = self.text.floor_char_boundary(offset);
        let line = self
            .starts
            .partition_point(|s| *s <= offset)
            .saturating_sub(1);
        let start = self.starts.get(line).copied().unwrap_or(0);
        lsp::Position::new(line as u32, utf16_len(&self.text[start..offset]))
    }

    /// The byte offset of a position; past the end of a line is its end, past the last
    /// line is the end of the text (clients may send either after an edit race).
    pub fn offset(&self, p: lsp::Position) -> usize {
        let Some(&start) = self.starts.get(p.line as usize) else {
            return self.text.len();
        };
        let end = self
            .starts
            .get(p.line as usize + 1)
            .map_or(self.text.len(), |e| e - 1);
        let mut units = 0usize;
        for (i, ch) in self.text.get(start..end).unwrap_or("").char_indices() {
            if units >= p.character as usize {
                return start + i;
            }
            units += ch.len_utf16();
        }
        end
    }

    pub fn range(&self, start: usize, end: usize) -> lsp::Range {
        lsp::Range::new(self.position(start), self.position(end))
    }
}

/// The length of `s` in UTF-16 code units (the protocol's columns).
fn utf16_len(s: &str) -> u32 {
    s.chars().map(|c| c.len_utf16() as u32).sum()
}

/// Positions of increasing offsets in one pass: each step counts only the text since the
/// previous offset, so converting every token of a line costs the line's length once
/// (not once per token, which made semantic tokens quadratic on long lines).
struct Cursor<'i, 't> {
    index: &'i LineIndex<'t>,
    offset: usize,
    pos: lsp::Position,
}

impl<'i, 't> Cursor<'i, 't> {
    fn new(index: &'i LineIndex<'t>) -> Self {
        Cursor {
            index,
            offset: 0,
            pos: lsp::Position::new(0, 0),
        }
    }

    /// The position of `offset`, which must not be before the previous one asked.
    fn to(&mut self, offset: usize) -> lsp::Position {
        let text = self.index.text;
        let offset = text.floor_char_boundary(offset);
        if offset < self.offset {
            return self.index.position(offset);
        }
        let gap = &text[self.offset..offset];
        self.pos = match gap.rfind('\n') {
            // Same line: only the new columns.
            None => lsp::Position::new(self.pos.line, self.pos.character + utf16_len(gap)),
            Some(_) => self.index.position(offset),
        };
        self.offset = offset;
        self.pos
    }
}

/// Applies one content change to a document's text.
pub fn apply_change(text: &mut String, change: &lsp::TextDocumentContentChangeEvent) {
    match change.range {
        None => *text = change.text.clone(),
        Some(r) => {
            let index = LineIndex::new(text);
            let (a, b) = (index.offset(r.start), index.offset(r.end));
            let (a, b) = (a.min(b), a.max(b));
            text.replace_range(a..b, &change.text);
        }
    }
}

/// A diagnostic of `lang` as the protocol's, in the document whose text is `index`'s.
/// Secondary labels become related information when the client gives the document a URI.
pub fn diagnostic(
    d: &Diagnostic,
    index: &LineIndex,
    uri: &lsp::Uri,
    file: nabla_lang::FileId,
) -> lsp::Diagnostic {
    let primary = d
        .labels
        .iter()
        .find(|l| l.primary && l.span.file == file)
        .or_else(|| d.labels.iter().find(|l| l.span.file == file));
    let range = primary.map_or_else(lsp::Range::default, |l| {
        index.range(l.span.start, l.span.end)
    });
    let mut message = d.message.clone();
    if let Some(l) = primary
        && !l.message.is_empty()
    {
        message.push_str(&format!(" ({})", l.message));
    }
    if let Some(h) = &d.help {
        message.push_str(&format!("\nhelp: {h}"));
    }
    for n in &d.notes {
        message.push_str(&format!("\nnote: {n}"));
    }
    let related: Vec<lsp::DiagnosticRelatedInformation> = d
        .labels
        .iter()
        .filter(|l| !l.primary && l.span.file == file)
        .map(|l| lsp::DiagnosticRelatedInformation {
            location: lsp::Location::new(uri.clone(), index.range(l.span.start, l.span.end)),
            message: l.message.clone(),
        })
        .collect();
    lsp::Diagnostic {
        range,
        severity: Some(match d.severity {
            Severity::Error => lsp::DiagnosticSeverity::ERROR,
            Severity::Warning => lsp::DiagnosticSeverity::WARNING,
            Severity::Note => lsp::DiagnosticSeverity::INFORMATION,
        }),
        code: Some(lsp::NumberOrString::String(d.code.to_string())),
        source: Some("nabla".into()),
        message,
        related_information: (!related.is_empty()).then_some(related),
        ..Default::default()
    }
}

pub fn completion_kind(k: CompletionKind) -> lsp::CompletionItemKind {
    match k {
        CompletionKind::Function => lsp::CompletionItemKind::FUNCTION,
        CompletionKind::Layer => lsp::CompletionItemKind::CONSTRUCTOR,
        CompletionKind::Net => lsp::CompletionItemKind::CLASS,
        CompletionKind::Record => lsp::CompletionItemKind::STRUCT,
        CompletionKind::Type => lsp::CompletionItemKind::TYPE_PARAMETER,
        CompletionKind::Field => lsp::CompletionItemKind::FIELD,
        CompletionKind::Variable => lsp::CompletionItemKind::VARIABLE,
        CompletionKind::Module => lsp::CompletionItemKind::MODULE,
        CompletionKind::Keyword => lsp::CompletionItemKind::KEYWORD,
    }
}

pub fn symbol_kind(k: SymbolKind) -> lsp::SymbolKind {
    match k {
        SymbolKind::Function => lsp::SymbolKind::FUNCTION,
        SymbolKind::Layer => lsp::SymbolKind::CONSTRUCTOR,
        SymbolKind::Net => lsp::SymbolKind::CLASS,
        SymbolKind::Rule => lsp::SymbolKind::OPERATOR,
        SymbolKind::Record => lsp::SymbolKind::STRUCT,
        SymbolKind::Type => lsp::SymbolKind::TYPE_PARAMETER,
        SymbolKind::Field => lsp::SymbolKind::FIELD,
        SymbolKind::Variable => lsp::SymbolKind::VARIABLE,
        SymbolKind::Stage => lsp::SymbolKind::METHOD,
    }
}

/// The semantic token types, in legend order.
pub const TOKEN_TYPES: &[&str] = &[
    "keyword", "function", "method", "class", "type", "variable", "property", "number", "string",
    "comment", "operator",
];

pub fn token_type(c: TokenClass) -> u32 {
    match c {
        TokenClass::Keyword => 0,
        TokenClass::Function => 1,
        TokenClass::Layer => 2,
        TokenClass::Net => 3,
        TokenClass::Type => 4,
        TokenClass::Variable => 5,
        TokenClass::Property => 6,
        TokenClass::Number => 7,
        TokenClass::String => 8,
        TokenClass::Comment => 9,
        TokenClass::Operator => 10,
    }
}

/// Tokens (offset, length, class) in the protocol's relative encoding; tokens spanning
/// lines are split at line ends, as clients without multiline support need.
pub fn semantic_tokens(
    index: &LineIndex,
    text: &str,
    tokens: &[(usize, usize, TokenClass)],
) -> Vec<lsp::SemanticToken> {
    let mut out = Vec::new();
    let (mut line, mut col) = (0u32, 0u32);
    let mut cursor = Cursor::new(index);
    for &(start, len, class) in tokens {
        let mut a = text.floor_char_boundary(start);
        let end = text.floor_char_boundary(start.saturating_add(len));
        while a < end {
            let line_end = text[a..end].find('\n').map_or(end, |i| a + i);
            let p = cursor.to(a);
            let width = utf16_len(&text[a..line_end]);
            // Tokens come sorted; one that would go backwards (overlapping another) is
            // dropped rather than encoded as a negative delta.
            if width > 0 && (p.line, p.character) >= (line, col) {
                let delta_line = p.line - line;
                let delta_start = if delta_line == 0 {
                    p.character - col
                } else {
                    p.character
                };
                out.push(lsp::SemanticToken {
                    delta_line,
                    delta_start,
                    length: width,
                    token_type: token_type(class),
                    token_modifiers_bitset: 0,
                });
                line = p.line;
                col = p.character;
            }
            a = line_end + 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_utf16_units() {
        let t = "ab\nx → y\n";
        let i = LineIndex::new(t);
        let y = t.find('y').expect("y");
        assert_eq!(i.position(y), lsp::Position::new(1, 4));
        assert_eq!(i.offset(lsp::Position::new(1, 4)), y);
        assert_eq!(i.offset(lsp::Position::new(0, 99)), 2);
        assert_eq!(i.offset(lsp::Position::new(9, 0)), t.len());
    }

    #[test]
    fn incremental_changes_apply() {
        let mut t = String::from("let x = 1\nlet y = 2\n");
        let change = lsp::TextDocumentContentChangeEvent {
            range: Some(lsp::Range::new(
                lsp::Position::new(1, 4),
                lsp::Position::new(1, 5),
            )),
            range_length: None,
            text: "zz".into(),
        };
        apply_change(&mut t, &change);
        assert_eq!(t, "let x = 1\nlet zz = 2\n");
    }
}

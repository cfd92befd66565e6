//! Diagnostics as data: a code, a severity, a message, labelled spans and help. They are
//! produced by every stage and rendered in one place per audience: [`render`] for the
//! terminal (ariadne), [`to_json`] for tools, and the LSP's boundary module for editors.
//!
//! Codes are stable and documented in `docs/errors.md`:
//! E00xx syntax, E01xx names and modules, E02xx host types, E03xx shapes, E04xx rules.

use std::fmt::Write as _;

use serde::Serialize;

use crate::span::{SourceMap, Span};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Note,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Label {
    pub span: Span,
    pub message: String,
    /// The primary label is where the problem is; secondary ones give context.
    pub primary: bool,
}

impl Label {
    pub fn primary(span: Span, message: impl Into<String>) -> Label {
        Label {
            span,
            message: message.into(),
            primary: true,
        }
    }
    pub fn secondary(span: Span, message: impl Into<String>) -> Label {
        Label {
            span,
            message: message.into(),
            primary: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnostic {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    pub labels: Vec<Label>,
    pub help: Option<String>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            labels: vec![],
            help: None,
            notes: vec![],
        }
    }
    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }
    pub fn with_label(mut self, label: Label) -> Diagnostic {
        self.labels.push(label);
        self
    }
    pub fn primary(self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.with_label(Label::primary(span, message))
    }
    pub fn secondary(self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.with_label(Label::secondary(span, message))
    }
    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }
    /// Where the problem is: the primary label's span.
    pub fn span(&self) -> Option<Span> {
        self.labels
            .iter()
            .find(|l| l.primary)
            .or(self.labels.first())
            .map(|l| l.span)
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Sorts diagnostics by position and drops exact duplicates (recovery can report one
/// problem twice through two paths).
pub fn normalize(diags: &mut Vec<Diagnostic>) {
    diags.sort_by_key(|d| d.span().map(|s| (s.file, s.start, s.end)));
    diags.dedup();
}

/// Renders one diagnostic for a terminal. `color` is off for tests and pipes.
pub fn render(d: &Diagnostic, sources: &SourceMap, color: bool) -> String {
    use ariadne::{Color, Config, IndexType, Report, ReportKind};
    let Some(primary) = d.span() else {
        return format!("{}[{}]: {}\n", severity_word(d.severity), d.code, d.message);
    };
    let kind = match d.severity {
        Severity::Error => ReportKind::Error,
        Severity::Warning => ReportKind::Warning,
        Severity::Note => ReportKind::Advice,
    };
    let name = |s: Span| sources.name(s.file).to_string();
    // Spans are byte offsets; ariadne gets character offsets, because with byte offsets
    // it places the header of a second file's snippet wrongly after non-ASCII text
    // (`<std.rules>:56:28` for a rule at 57:6).
    let clamp = |s: Span| {
        let text = sources.text(s.file);
        let chars = |b: usize| {
            let b = b.min(text.len());
            text.char_indices().take_while(|(i, _)| *i < b).count()
        };
        let start = chars(s.start);
        start..chars(s.end).max(start)
    };
    let mut report = Report::build(kind, (name(primary), clamp(primary)))
        .with_config(
            Config::default()
                .with_index_type(IndexType::Char)
                .with_color(color),
        )
        .with_code(d.code)
        .with_message(&d.message);
    for (i, l) in d.labels.iter().enumerate() {
        let color = if l.primary { Color::Red } else { Color::Blue };
        report = report.with_label(
            ariadne::Label::new((name(l.span), clamp(l.span)))
                .with_message(&l.message)
                .with_color(color)
                .with_order(i as i32),
        );
    }
    if let Some(h) = &d.help {
        report = report.with_help(h);
    }
    for n in &d.notes {
        report = report.with_note(n);
    }
    let mut files: Vec<Span> = d.labels.iter().map(|l| l.span).collect();
    files.dedup_by_key(|s| s.file);
    let cache = ariadne::sources(
        files
            .iter()
            .map(|s| (name(*s), sources.text(s.file).to_string()))
            .collect::<Vec<_>>(),
    );
    let mut out = Vec::new();
    if report.finish().write(cache, &mut out).is_err() {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}[{}]: {}",
            severity_word(d.severity),
            d.code,
            d.message
        );
        return s;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Note => "note",
    }
}

/// One JSON object per diagnostic, with file names and 1-based line/column added so tools
/// need no source map.
pub fn to_json(d: &Diagnostic, sources: &SourceMap) -> serde_json::Value {
    let loc = |s: Span| {
        let (line, col) = sources.line_col(s.file, s.start);
        let (end_line, end_col) = sources.line_col(s.file, s.end);
        serde_json::json!({
            "file": sources.name(s.file),
            "start": s.start, "end": s.end,
            "line": line, "column": col, "end_line": end_line, "end_column": end_col,
        })
    };
    serde_json::json!({
        "code": d.code,
        "severity": d.severity,
        "message": d.message,
        "span": d.span().map(loc),
        "labels": d.labels.iter().map(|l| serde_json::json!({
            "span": loc(l.span), "message": l.message, "primary": l.primary,
        })).collect::<Vec<_>>(),
        "help": d.help,
        "notes": d.notes,
    })
}

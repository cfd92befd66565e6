//! Diagnostics as data: a code, a severity, a message, labelled spans and help. They are
//! produced by every stage and rendered in one place per audience: [`render`] for the
//! terminal (ariadne), [`to_json`] for tools, and the LSP's boundary module for editors.
//!
//! Codes are stable and documented in `docs/errors.md`:
//! E00xx syntax, E01xx names and modules, E02xx host types, E03xx shapes, E04xx rules.

use std::fmt::Write as _;

use serde::Serialize;

use crate::span::{FileId, SourceMap, Span};

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
    let groups = snippet_groups(d, sources);
    let id = |i: usize| Snippet {
        name: name(d.labels[i].span),
        group: groups[i],
    };
    // The report's location names the group of its primary label, so that ariadne heads
    // that snippet with the primary's line and every other snippet with its own.
    let primary_id = match d.labels.iter().position(|l| l.span == primary) {
        Some(i) => id(i),
        None => Snippet {
            name: name(primary),
            group: usize::MAX,
        },
    };
    let mut report = Report::build(kind, (primary_id.clone(), clamp(primary)))
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
            ariadne::Label::new((id(i), clamp(l.span)))
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
    let mut ids: Vec<(Snippet, FileId)> = (0..d.labels.len())
        .map(|i| (id(i), d.labels[i].span.file))
        .collect();
    ids.push((primary_id, primary.file));
    ids.dedup();
    let cache = ariadne::sources(
        ids.into_iter()
            .map(|(snippet, file)| (snippet, sources.text(file).to_string()))
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

/// A source as ariadne sees it: a file, and which of its snippets. ariadne starts a new
/// snippet when the next label of a file lies above the previous one (a trace that goes
/// back up a file), and heads every snippet of the report's own file with the report's
/// location; giving each snippet its own id makes each header name its own first label.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Snippet {
    name: String,
    group: usize,
}

impl std::fmt::Display for Snippet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// The snippet of each label, numbered as ariadne groups them: labels in order, a new
/// snippet at a change of file or when a label ends on an earlier line than the last.
fn snippet_groups(d: &Diagnostic, sources: &SourceMap) -> Vec<usize> {
    let end_line = |s: Span| {
        let text = sources.text(s.file);
        let end = if s.end > s.start { s.end - 1 } else { s.start };
        text.as_bytes()[..end.min(text.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    };
    let mut groups = Vec::with_capacity(d.labels.len());
    let mut last: Option<(FileId, usize)> = None;
    let mut group = 0;
    for l in &d.labels {
        let (file, line) = (l.span.file, end_line(l.span));
        if let Some((f, prev)) = last
            && (f != file || line < prev)
        {
            group += 1;
        }
        last = Some((file, line));
        groups.push(group);
    }
    groups
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

/// The closest name (by edit distance) for "did you mean".
pub fn closest<'n>(name: &str, candidates: impl Iterator<Item = &'n str>) -> Option<String> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .filter(|c| *c != name)
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit && *d < name.chars().count())
        .min()
        .map(|(_, c)| c.to_string())
}

/// Edit distance counting a swap of two neighbours as one edit (`rleu` → `relu`).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for j in 0..=b.len() {
        d[0][j] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

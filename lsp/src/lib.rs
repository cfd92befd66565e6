//! `nabla lsp`: the language server. It is the only crate that knows the protocol: it
//! keeps the open documents, checks them with `lang` (each open file is a root; imports
//! are served by the CLI's loader, asking open buffers before the disk),
//! and answers requests from `lang::ide` through [`convert`].
//!
//! Diagnostics are published after a short debounce (an edit that is followed by another
//! within [`DEBOUNCE_MS`] is not checked on its own), for the edited file and every open
//! file that imports it. Requests never wait for the debounce: a request on a document
//! whose last check is older than its text checks it first (a check of any example takes
//! a few milliseconds). Checking runs behind `catch_unwind`, so a bug in the checker
//! costs one answer, never the server.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod convert;
pub mod frame;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;

use dashmap::DashMap;
use nabla_lang::check::{Checked, check_files_for_editor};
use nabla_lang::span::{FileId, Span};
use nabla_stdlib::FileLoader;
use tower_lsp_server::jsonrpc::{Error, ErrorCode, Result};
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer, LspService, Server};

use convert::LineIndex;

/// How long an edit waits for the next one before its file is checked and diagnostics
/// published.
pub const DEBOUNCE_MS: u64 = 40;

/// An open document.
#[derive(Clone)]
struct Doc {
    text: String,
    version: i32,
}

/// A check of one open document at one version.
struct Analysis {
    checked: Checked,
    version: i32,
    text: String,
    /// The document's file in `checked`.
    file: FileId,
}

struct State {
    client: Client,
    docs: DashMap<Uri, Doc>,
    analyses: DashMap<Uri, Arc<Analysis>>,
    /// Where the standard library's sources are written so editors can open them.
    std_dir: PathBuf,
}

/// The server: shared state behind an `Arc`, so debounce tasks can hold it.
#[derive(Clone)]
pub struct Nabla(Arc<State>);

/// Serves the protocol on stdin/stdout until the client exits or closes its end.
///
/// Three pieces around the server: a thread that splits stdin into frames
/// ([`frame::Reader`]) and answers malformed ones itself, passing the rest on through a
/// pipe; a task that reads the server's frames back from its output pipe; and a thread
/// that owns stdout and writes whole frames, one at a time, from both, so an error reply
/// never lands inside another frame.
pub fn serve_stdio() -> std::result::Result<(), String> {
    use std::sync::mpsc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("lsp-stdout".into())
        .spawn(move || {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            for f in out_rx {
                if stdout.write_all(&f).and_then(|_| stdout.flush()).is_err() {
                    break;
                }
            }
            let _ = done_tx.send(());
        })
        .map_err(|e| e.to_string())?;
    // Bounded: a client that sends faster than the server reads waits in its writes.
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel::<frame::Event>(16);
    let stdin = frame::stdin().map_err(|e| format!("cannot read stdin: {e}"))?;
    std::thread::Builder::new()
        .name("lsp-stdin".into())
        .spawn(move || {
            let mut reader = frame::Reader::new(stdin);
            while let Some(e) = reader.next_event() {
                if ev_tx.blocking_send(e).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (mut to_server, server_in) = tokio::io::duplex(1 << 16);
        let (server_out, mut from_server) = tokio::io::duplex(1 << 16);
        let replies = out_tx.clone();
        let feeder = tokio::spawn(async move {
            while let Some(e) = ev_rx.recv().await {
                match e {
                    frame::Event::Forward(body) => {
                        if to_server.write_all(&frame::frame(&body)).await.is_err() {
                            break;
                        }
                    }
                    frame::Event::Reply(f) => {
                        let _ = replies.send(f);
                    }
                    frame::Event::Ignored(why) => eprintln!("nabla lsp: ignored: {why}"),
                }
            }
            let _ = to_server.shutdown().await;
        });
        let server_frames = out_tx.clone();
        let pump = tokio::spawn(async move {
            // The server's own output is always well formed: header, blank line, body.
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 1 << 16];
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let header = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let len = header
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length:"))
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        break;
                    }
                    let frame: Vec<u8> = buf.drain(..end + 4 + len).collect();
                    let _ = server_frames.send(frame);
                }
                match from_server.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        let (service, socket) = LspService::new(Nabla::new);
        Server::new(server_in, server_out, socket)
            .serve(service)
            .await;
        let _ = pump.await;
        feeder.abort();
    });
    // Dropping the runtime drops the feeder, and with it the last sender but ours.
    drop(rt);
    drop(out_tx);
    // Let the last frames reach the client, unless it stopped reading.
    let _ = done_rx.recv_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

/// The local path a URI names, or the URI itself (an unsaved buffer).
fn path_of(uri: &Uri) -> String {
    uri.to_file_path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| uri.as_str().to_string())
}

fn failed(message: impl Into<String>) -> Error {
    Error {
        code: ErrorCode::ServerError(-32803),
        message: message.into().into(),
        data: None,
    }
}

impl Nabla {
    pub fn new(client: Client) -> Nabla {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        let std_dir = base
            .join("nabla")
            .join(format!("std-{}", env!("CARGO_PKG_VERSION")));
        Nabla(Arc::new(State {
            client,
            docs: DashMap::new(),
            analyses: DashMap::new(),
            std_dir,
        }))
    }

    /// Checks `uri` at its current text; `None` when it is not open or the checker failed.
    fn analyze(&self, uri: &Uri) -> Option<Arc<Analysis>> {
        let doc = self.0.docs.get(uri)?.clone();
        let open = |path: &str| Some(self.0.docs.get(&Uri::from_file_path(path)?)?.text.clone());
        let loader = FileLoader::with_open(&open);
        let name = path_of(uri);
        let roots = [(name.clone(), doc.text.clone())];
        let checked =
            std::panic::catch_unwind(AssertUnwindSafe(|| check_files_for_editor(&roots, &loader)))
                .ok()?;
        let file = checked.program.sources.find(&name)?;
        let a = Arc::new(Analysis {
            checked,
            version: doc.version,
            text: doc.text,
            file,
        });
        self.0.analyses.insert(uri.clone(), a.clone());
        Some(a)
    }

    /// The analysis of `uri` at its current version, checking it now if it is stale.
    fn fresh(&self, uri: &Uri) -> Option<Arc<Analysis>> {
        let version = self.0.docs.get(uri)?.version;
        if let Some(a) = self.0.analyses.get(uri)
            && a.version == version
        {
            return Some(a.clone());
        }
        self.analyze(uri)
    }

    fn is_std_copy(&self, uri: &Uri) -> bool {
        uri.to_file_path()
            .is_some_and(|p| p.starts_with(&self.0.std_dir))
    }

    async fn publish(&self, uri: &Uri) {
        let Some(a) = self.analyze(uri) else { return };
        let diags = if self.is_std_copy(uri) {
            vec![]
        } else {
            let index = LineIndex::new(&a.text);
            a.checked
                .diagnostics
                .iter()
                .filter(|d| d.span().is_none_or(|s| s.file == a.file))
                .map(|d| convert::diagnostic(d, &index, uri, a.file))
                .collect()
        };
        self.0
            .client
            .publish_diagnostics(uri.clone(), diags, Some(a.version))
            .await;
    }

    /// Publishes `uri`'s diagnostics after the debounce, unless it changed again, then
    /// those of every other open file that imports it.
    fn schedule(&self, uri: Uri, version: i32) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(DEBOUNCE_MS)).await;
            if me.0.docs.get(&uri).map(|d| d.version) != Some(version) {
                return;
            }
            me.publish(&uri).await;
            let name = path_of(&uri);
            let dependents: Vec<Uri> =
                me.0.analyses
                    .iter()
                    .filter(|e| {
                        *e.key() != uri && e.value().checked.program.sources.find(&name).is_some()
                    })
                    .map(|e| e.key().clone())
                    .collect();
            for d in dependents {
                me.publish(&d).await;
            }
        });
    }

    /// A span of a check as a location: user files by path, the standard library as the
    /// copy written under the cache directory.
    fn location(&self, a: &Analysis, span: Span) -> Option<Location> {
        let sources = &a.checked.program.sources;
        let name = sources.name(span.file);
        let text = sources.text(span.file);
        let uri = match name.strip_prefix('<').and_then(|n| n.strip_suffix('>')) {
            Some(module) => self.std_copy(module, text)?,
            None => Uri::from_file_path(name).or_else(|| name.parse().ok())?,
        };
        Some(Location::new(
            uri,
            LineIndex::new(text).range(span.start, span.end),
        ))
    }

    /// Writes the standard module's source under the cache directory (once per version).
    fn std_copy(&self, module: &str, text: &str) -> Option<Uri> {
        let mut path = self.0.std_dir.clone();
        for part in module.split('.') {
            path.push(part);
        }
        path.set_extension("net");
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
            std::fs::create_dir_all(path.parent()?).ok()?;
            nabla_stdlib::runtime::files::write_atomically(&path, text.as_bytes()).ok()?;
        }
        Uri::from_file_path(&path)
    }

    /// The analysis and byte offset of a request's position.
    fn at(&self, uri: &Uri, pos: Position) -> Option<(Arc<Analysis>, usize)> {
        let a = self.fresh(uri)?;
        let offset = LineIndex::new(&a.text).offset(pos);
        Some((a, offset))
    }

    /// What `uri` may import: the standard modules and the `.net` files beside it.
    fn importable(uri: &Uri) -> Vec<String> {
        let mut out: Vec<String> = nabla_stdlib::MODULES
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        let Some(path) = uri.to_file_path() else {
            return out;
        };
        let Some(dir) = path.parent() else { return out };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        out.extend(entries.filter_map(|e| e.ok()).filter_map(|e| {
            let p = e.path();
            (p.extension().is_some_and(|x| x == "net") && p != *path)
                .then(|| p.file_stem().map(|s| s.to_string_lossy().to_string()))?
        }));
        out
    }
}

impl LanguageServer for Nabla {
    async fn initialize(&self, _: InitializeParams) -> Result<InitializeResult> {
        let legend = SemanticTokensLegend {
            token_types: convert::TOKEN_TYPES
                .iter()
                .map(|t| SemanticTokenType::new(t))
                .collect(),
            token_modifiers: vec![],
        };
        Ok(InitializeResult {
            server_info: Some(ServerInfo {
                name: "nabla".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
            offset_encoding: None,
            capabilities: ServerCapabilities {
                text_document_sync: Some(TextDocumentSyncCapability::Kind(
                    TextDocumentSyncKind::INCREMENTAL,
                )),
                hover_provider: Some(HoverProviderCapability::Simple(true)),
                completion_provider: Some(CompletionOptions {
                    trigger_characters: Some(vec![".".into()]),
                    ..Default::default()
                }),
                definition_provider: Some(OneOf::Left(true)),
                references_provider: Some(OneOf::Left(true)),
                document_symbol_provider: Some(OneOf::Left(true)),
                rename_provider: Some(OneOf::Left(true)),
                document_formatting_provider: Some(OneOf::Left(true)),
                inlay_hint_provider: Some(OneOf::Left(true)),
                semantic_tokens_provider: Some(
                    SemanticTokensServerCapabilities::SemanticTokensOptions(
                        SemanticTokensOptions {
                            legend,
                            full: Some(SemanticTokensFullOptions::Bool(true)),
                            range: None,
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            },
        })
    }

    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }

    async fn did_open(&self, p: DidOpenTextDocumentParams) {
        let d = p.text_document;
        self.0.docs.insert(
            d.uri.clone(),
            Doc {
                text: d.text,
                version: d.version,
            },
        );
        self.publish(&d.uri).await;
    }

    async fn did_change(&self, p: DidChangeTextDocumentParams) {
        let uri = p.text_document.uri;
        let version = p.text_document.version;
        {
            let Some(mut doc) = self.0.docs.get_mut(&uri) else {
                return;
            };
            for c in &p.content_changes {
                convert::apply_change(&mut doc.text, c);
            }
            doc.version = version;
        }
        self.schedule(uri, version);
    }

    async fn did_close(&self, p: DidCloseTextDocumentParams) {
        let uri = p.text_document.uri;
        self.0.docs.remove(&uri);
        self.0.analyses.remove(&uri);
        self.0.client.publish_diagnostics(uri, vec![], None).await;
    }

    async fn hover(&self, p: HoverParams) -> Result<Option<Hover>> {
        let q = p.text_document_position_params;
        let Some((a, offset)) = self.at(&q.text_document.uri, q.position) else {
            return Ok(None);
        };
        let Some(h) = nabla_lang::ide::hover(&a.checked, a.file, offset) else {
            return Ok(None);
        };
        let range = (h.span.file == a.file)
            .then(|| LineIndex::new(&a.text).range(h.span.start, h.span.end));
        Ok(Some(Hover {
            contents: HoverContents::Markup(MarkupContent {
                kind: MarkupKind::Markdown,
                value: h.markdown,
            }),
            range,
        }))
    }

    async fn goto_definition(
        &self,
        p: GotoDefinitionParams,
    ) -> Result<Option<GotoDefinitionResponse>> {
        let q = p.text_document_position_params;
        let Some((a, offset)) = self.at(&q.text_document.uri, q.position) else {
            return Ok(None);
        };
        let Some(span) = nabla_lang::ide::definition(&a.checked, a.file, offset) else {
            return Ok(None);
        };
        Ok(self.location(&a, span).map(GotoDefinitionResponse::Scalar))
    }

    async fn references(&self, p: ReferenceParams) -> Result<Option<Vec<Location>>> {
        let q = p.text_document_position;
        let Some((a, offset)) = self.at(&q.text_document.uri, q.position) else {
            return Ok(None);
        };
        let Some(t) = nabla_lang::ide::target_at(&a.checked, a.file, offset) else {
            return Ok(None);
        };
        let spans = nabla_lang::ide::references(&a.checked, &t, p.context.include_declaration);
        Ok(Some(
            spans
                .into_iter()
                .filter_map(|s| self.location(&a, s))
                .collect(),
        ))
    }

    async fn rename(&self, p: RenameParams) -> Result<Option<WorkspaceEdit>> {
        let q = p.text_document_position;
        let uri = q.text_document.uri;
        let Some((a, offset)) = self.at(&uri, q.position) else {
            return Ok(None);
        };
        let spans =
            nabla_lang::ide::rename(&a.checked, a.file, offset, &p.new_name).map_err(failed)?;
        let index = LineIndex::new(&a.text);
        let edits = spans
            .into_iter()
            .map(|s| TextEdit::new(index.range(s.start, s.end), p.new_name.clone()))
            .collect();
        Ok(Some(WorkspaceEdit {
            changes: Some(HashMap::from([(uri, edits)])),
            ..Default::default()
        }))
    }

    async fn document_symbol(
        &self,
        p: DocumentSymbolParams,
    ) -> Result<Option<DocumentSymbolResponse>> {
        let Some(a) = self.fresh(&p.text_document.uri) else {
            return Ok(None);
        };
        let index = LineIndex::new(&a.text);
        #[allow(deprecated)]
        fn conv(index: &LineIndex, s: nabla_lang::ide::Symbol) -> DocumentSymbol {
            DocumentSymbol {
                name: if s.name.is_empty() {
                    "_".into()
                } else {
                    s.name
                },
                detail: (!s.detail.is_empty()).then_some(s.detail),
                kind: convert::symbol_kind(s.kind),
                tags: None,
                deprecated: None,
                range: index.range(s.span.start, s.span.end),
                selection_range: index.range(s.selection.start, s.selection.end),
                children: (!s.children.is_empty())
                    .then(|| s.children.into_iter().map(|c| conv(index, c)).collect()),
            }
        }
        let symbols = nabla_lang::ide::symbols(&a.checked, a.file)
            .into_iter()
            .map(|s| conv(&index, s))
            .collect();
        Ok(Some(DocumentSymbolResponse::Nested(symbols)))
    }

    async fn inlay_hint(&self, p: InlayHintParams) -> Result<Option<Vec<InlayHint>>> {
        let Some(a) = self.fresh(&p.text_document.uri) else {
            return Ok(None);
        };
        let index = LineIndex::new(&a.text);
        let (from, to) = (index.offset(p.range.start), index.offset(p.range.end));
        let hints = nabla_lang::ide::inlay_hints(&a.checked, a.file)
            .into_iter()
            .filter(|h| h.offset >= from && h.offset <= to)
            .map(|h| InlayHint {
                position: index.position(h.offset),
                label: InlayHintLabel::String(h.label),
                kind: Some(InlayHintKind::TYPE),
                text_edits: None,
                tooltip: None,
                padding_left: None,
                padding_right: None,
                data: None,
            })
            .collect();
        Ok(Some(hints))
    }

    async fn completion(&self, p: CompletionParams) -> Result<Option<CompletionResponse>> {
        let q = p.text_document_position;
        let uri = q.text_document.uri;
        let Some(doc) = self.0.docs.get(&uri).map(|d| d.text.clone()) else {
            return Ok(None);
        };
        let offset = LineIndex::new(&doc).offset(q.position);
        // The last good check of the names; the text is the current one.
        let Some(a) = self
            .0
            .analyses
            .get(&uri)
            .map(|a| a.clone())
            .or_else(|| self.analyze(&uri))
        else {
            return Ok(None);
        };
        let items =
            nabla_lang::ide::completions(&a.checked, a.file, &doc, offset, &Self::importable(&uri))
                .into_iter()
                .map(|c| CompletionItem {
                    label: c.label,
                    kind: Some(convert::completion_kind(c.kind)),
                    detail: Some(c.detail),
                    documentation: c.doc.map(|d| {
                        Documentation::MarkupContent(MarkupContent {
                            kind: MarkupKind::Markdown,
                            value: d,
                        })
                    }),
                    insert_text_format: c.snippet.as_ref().map(|_| InsertTextFormat::SNIPPET),
                    insert_text: c.snippet,
                    ..Default::default()
                })
                .collect();
        Ok(Some(CompletionResponse::Array(items)))
    }

    async fn semantic_tokens_full(
        &self,
        p: SemanticTokensParams,
    ) -> Result<Option<SemanticTokensResult>> {
        let Some(a) = self.fresh(&p.text_document.uri) else {
            return Ok(None);
        };
        let index = LineIndex::new(&a.text);
        let tokens = nabla_lang::ide::semantic_tokens(&a.checked, a.file, &a.text);
        let data = convert::semantic_tokens(&index, &a.text, &tokens);
        Ok(Some(SemanticTokensResult::Tokens(SemanticTokens {
            result_id: None,
            data,
        })))
    }

    async fn formatting(&self, p: DocumentFormattingParams) -> Result<Option<Vec<TextEdit>>> {
        let Some(text) = self
            .0
            .docs
            .get(&p.text_document.uri)
            .map(|d| d.text.clone())
        else {
            return Ok(None);
        };
        let formatted = nabla_lang::syntax::format::format(&text).map_err(failed)?;
        if formatted == text {
            return Ok(Some(vec![]));
        }
        let index = LineIndex::new(&text);
        Ok(Some(vec![TextEdit::new(
            index.range(0, text.len()),
            formatted,
        )]))
    }
}

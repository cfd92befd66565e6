//! `nabla repl`: a session of host code and definitions, compiled input by input.
//!
//! The session is the text of every input that succeeded. Each new input is checked with
//! that text in front of it, so names, types and shapes are known; its host code is
//! lowered with the earlier top-level statements marked as already run (their bindings
//! come from the session's globals) and compiled with Cranelift. An input that fails to
//! check, lower or run leaves the session as it was.
//!
//! On a terminal, input goes through rustyline (history, completion of names and record
//! fields, multi-line input while brackets are open); otherwise lines are read from stdin
//! with the same multi-line rule, which is how the tests drive it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Instant;

use nabla_jit::Cpu;
use nabla_lang::check::{Checked, check_source};
use nabla_lang::host::heap::Heap;
use nabla_lang::host::{HKind, HTy, Word};
use nabla_stdlib::runtime::{Options, Runtime};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};

const HELP: &str = "\
Enter definitions (fn, layer, net, record, import) and host statements; they stay in the
session. A trailing expression's value is printed. Commands:
  :type EXPR    the type of a host expression, or the signature of a function or net
  :shape NET    each stage's output shape and parameters
  :vjp NAME     the derived backward pass of a net or tensor function, as source
  :ir NET       the tensor IR of a net's forward pass
  :load FILE    run a file's text as input
  :time INPUT   run an input and print how long it took
  :device [D]   where tensor code runs from now on: cpu, wgpu, cuda, hip or ref (no
                argument: the current one); models made before stay on their device
  :help         this text
  :quit         leave (or Ctrl-D)";

const KEYWORDS: &[&str] = &[
    "let", "var", "fn", "layer", "net", "record", "import", "if", "else", "for", "in", "while",
    "return", "break", "continue", "true", "false",
];
const COMMANDS: &[&str] = &[
    ":type", ":shape", ":vjp", ":ir", ":load", ":time", ":device", ":help", ":quit",
];

/// The session: its text, how many of its top-level statements ran, and their values.
struct Session {
    text: String,
    done: usize,
    names: Vec<String>,
    globals: Vec<Word>,
    heap: Heap,
    backend: Dev,
    options: Options,
    /// For completion: names in scope and each record-typed global's fields.
    words: Vec<String>,
    fields: HashMap<String, Vec<String>>,
}

/// The session's backend (one of each kind; a model lives on the one that made it).
enum Dev {
    Cpu(Cpu),
    Wgpu(nabla_gpu::Wgpu),
    #[cfg(feature = "cuda")]
    Cuda(nabla_gpu::Cuda),
    #[cfg(feature = "hip")]
    Hip(nabla_gpu::Hip),
    Ref(nabla_lang::backend::Interp),
}

impl Dev {
    /// The backend named `name` (`cpu`, `wgpu`, …), opened.
    fn open(name: &str) -> Result<Dev, crate::Failure> {
        use crate::run::Device;
        let device = <Device as clap::ValueEnum>::from_str(name, true).map_err(|_| {
            crate::Failure::Message(format!(
                "unknown device `{name}`: expected cpu, wgpu, cuda, hip or ref"
            ))
        })?;
        let fail = |e: nabla_lang::backend::BackendError| crate::Failure::Message(e.to_string());
        Ok(match device {
            Device::Cpu => Dev::Cpu(Cpu::new()),
            Device::Wgpu => Dev::Wgpu(nabla_gpu::wgpu().map_err(fail)?),
            #[cfg(feature = "cuda")]
            Device::Cuda => Dev::Cuda(nabla_gpu::cuda().map_err(fail)?),
            #[cfg(feature = "hip")]
            Device::Hip => Dev::Hip(nabla_gpu::hip().map_err(fail)?),
            Device::Ref => Dev::Ref(nabla_lang::backend::Interp {
                precision: nabla_lang::interp::Precision::F64,
                memory: nabla_jit::memory_available(),
            }),
            #[allow(unreachable_patterns)]
            other => return Err(crate::Failure::Message(crate::run::not_built(other))),
        })
    }

    fn describe(&self) -> String {
        use nabla_lang::backend::Backend;
        match self {
            Dev::Cpu(b) => b.describe(),
            Dev::Wgpu(b) => b.describe(),
            #[cfg(feature = "cuda")]
            Dev::Cuda(b) => b.describe(),
            #[cfg(feature = "hip")]
            Dev::Hip(b) => b.describe(),
            Dev::Ref(_) => "the f64 reference interpreter".into(),
        }
    }
}

/// Runs one lowered input's host code with tensor code on `backend`.
fn run_on<B: nabla_lang::backend::Backend + 'static>(
    backend: &B,
    checked: &Checked,
    prog: &nabla_lang::host::HostProgram,
    heap: &mut Heap,
    globals: &mut Vec<Word>,
    options: Options,
    offset: usize,
) -> Result<(), crate::Failure> {
    let mut rt = Runtime::new(&checked.program, prog, backend, options)
        .map_err(|d| crate::Failure::Rendered(render_input(offset, checked, &d)))?;
    let compiled = nabla_host::compile(prog, heap)?;
    compiled.run(prog, heap, &mut rt, globals).map_err(|e| {
        let mut d = nabla_lang::Diagnostic::error("E0701", e.message.clone());
        if let Some(s) = e.span {
            d = d.primary(s, "while running this");
        }
        for s in &e.trace {
            d = d.secondary(*s, "called from here");
        }
        crate::Failure::Rendered(render_input(offset, checked, &d))
    })
}

/// Whether `text` has an unclosed bracket outside string literals (more input is due).
fn incomplete(text: &str) -> bool {
    let mut depth = 0i64;
    let mut in_str = false;
    let mut prev = ' ';
    for c in text.chars() {
        match c {
            '"' if prev != '\\' => in_str = !in_str,
            '(' | '[' | '{' if !in_str => depth += 1,
            ')' | ']' | '}' if !in_str => depth -= 1,
            _ => {}
        }
        prev = c;
    }
    depth > 0 || in_str
}

/// Renders `d` with the input that starts at byte `offset` of the session's text as its
/// own file, `<input>`, so line numbers count from the input's first line; spans in
/// earlier inputs keep the session's numbering under `<repl>`.
fn render_input(offset: usize, checked: &Checked, d: &nabla_lang::Diagnostic) -> String {
    let mut sources = checked.program.sources.clone();
    let session = nabla_lang::FileId(0);
    let rest = sources
        .text(session)
        .get(offset..)
        .unwrap_or_default()
        .to_string();
    let input = sources.add("<input>", rest);
    let mut d = d.clone();
    for l in &mut d.labels {
        if l.span.file == session && l.span.start >= offset {
            l.span = nabla_lang::Span::new(input, l.span.start - offset, l.span.end - offset);
        }
    }
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    nabla_lang::diag::render(&d, &sources, color)
}

fn top_level_statements(c: &Checked) -> usize {
    c.program
        .modules
        .first()
        .map(|m| {
            m.ast
                .items
                .iter()
                .filter(|i| matches!(i.kind, nabla_lang::syntax::ast::ItemKind::Stmt(_)))
                .count()
        })
        .unwrap_or(0)
}

impl Session {
    fn new(data: Option<PathBuf>) -> Session {
        let options = Options {
            data: data.or_else(|| std::env::var_os("NABLA_DATA").map(PathBuf::from)),
            progress: std::io::stderr().is_terminal(),
        };
        let mut s = Session {
            text: String::new(),
            done: 0,
            names: vec![],
            globals: vec![],
            heap: Heap::default(),
            backend: Dev::Cpu(Cpu::new()),
            options,
            words: vec![],
            fields: HashMap::new(),
        };
        if let Ok(c) = s.check("") {
            s.remember(&c, None);
        }
        s
    }

    fn render(&self, checked: &Checked, d: &nabla_lang::Diagnostic) -> String {
        render_input(self.text.len(), checked, d)
    }

    /// Checks the session with `input` after it; errors are printed and give `Err`.
    fn check(&self, input: &str) -> Result<Checked, ()> {
        let text = format!("{}{input}\n", self.text);
        let checked = check_source("<repl>", &text, &nabla_stdlib::FileLoader::disk());
        let offset = self.text.len();
        let mut failed = false;
        for d in &checked.diagnostics {
            // Earlier inputs checked already: show only what this input brings.
            let new = d
                .span()
                .is_none_or(|s| s.file != nabla_lang::FileId(0) || s.end > offset);
            if new {
                eprint!("{}", self.render(&checked, d));
            }
            failed |= d.is_error();
        }
        if failed { Err(()) } else { Ok(checked) }
    }

    /// Names for completion after an input succeeded.
    fn remember(&mut self, c: &Checked, prog: Option<&nabla_lang::host::HostProgram>) {
        let mut words: Vec<String> = c.program.visible_names(0).into_iter().collect();
        words.extend(self.names.iter().cloned());
        words.extend(KEYWORDS.iter().map(|k| k.to_string()));
        words.sort();
        words.dedup();
        self.words = words;
        if let Some(prog) = prog {
            self.fields.clear();
            for (name, ty) in &prog.globals {
                if let HTy::Record(id) = ty
                    && let Some(l) = prog.records.get(id)
                {
                    self.fields.insert(
                        name.clone(),
                        l.fields.iter().map(|(f, _)| f.clone()).collect(),
                    );
                }
            }
        }
    }

    /// Runs one input (definitions and statements).
    fn eval(&mut self, input: &str) {
        // A Ctrl-C from before this input is not for it.
        nabla_lang::host::interrupt::take();
        let Ok(checked) = self.check(input) else {
            return;
        };
        let lowered = nabla_lang::host::lower::lower_session(
            &checked.program,
            0,
            self.done,
            &self.names,
            true,
        );
        let (prog, _) = match lowered {
            Ok(p) => p,
            Err(ds) => {
                for d in &ds {
                    eprint!("{}", self.render(&checked, d));
                }
                return;
            }
        };
        let offset = self.text.len();
        let (heap, globals, options) = (&mut self.heap, &mut self.globals, self.options.clone());
        let result = match &self.backend {
            Dev::Cpu(b) => run_on(b, &checked, &prog, heap, globals, options, offset),
            Dev::Wgpu(b) => run_on(b, &checked, &prog, heap, globals, options, offset),
            #[cfg(feature = "cuda")]
            Dev::Cuda(b) => run_on(b, &checked, &prog, heap, globals, options, offset),
            #[cfg(feature = "hip")]
            Dev::Hip(b) => run_on(b, &checked, &prog, heap, globals, options, offset),
            Dev::Ref(b) => run_on(b, &checked, &prog, heap, globals, options, offset),
        };
        match result {
            Ok(()) => {
                self.text = format!("{}{input}\n", self.text);
                self.done = top_level_statements(&checked);
                self.names = prog.globals.iter().map(|(n, _)| n.clone()).collect();
                self.remember(&checked, Some(&prog));
            }
            Err(e) => {
                crate::print_error(&e);
                // Reported: a Ctrl-C that stopped this input is spent.
                nabla_lang::host::interrupt::take();
            }
        }
    }

    /// `:type EXPR`.
    fn type_of(&self, expr: &str) {
        let Ok(checked) = self.check("") else { return };
        let name = expr.trim();
        if let Some(id) = checked.program.lookup(0, name) {
            let def = &checked.program.items[id];
            let text = checked.program.sources.text(def.span.file);
            let start = text[..def.span.start].rfind('\n').map_or(0, |i| i + 1);
            let line = text[start..]
                .lines()
                .next()
                .unwrap_or("")
                .trim_end_matches('{')
                .trim();
            println!("{line}");
            return;
        }
        let Ok(checked) = self.check(expr) else {
            return;
        };
        match nabla_lang::host::lower::lower_session(
            &checked.program,
            0,
            self.done,
            &self.names,
            false,
        ) {
            Ok((prog, _)) => {
                let ty = prog.funcs.get(prog.main).and_then(|f| match &f.body.kind {
                    HKind::Block(items) => items.last().map(|e| e.ty.clone()),
                    _ => None,
                });
                match ty {
                    Some(t) => println!("{}", show_type(&checked, &t)),
                    None => println!("()"),
                }
            }
            Err(ds) => ds
                .iter()
                .for_each(|d| eprint!("{}", self.render(&checked, d))),
        }
    }

    fn command(&mut self, line: &str) -> bool {
        let (cmd, arg) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let arg = arg.trim();
        match cmd {
            ":quit" | ":q" => return false,
            ":help" | ":h" => println!("{HELP}"),
            ":type" | ":t" => self.type_of(arg),
            ":shape" => {
                if let Ok(c) = self.check("")
                    && let Err(e) = crate::info(&c, (!arg.is_empty()).then_some(arg), false)
                {
                    eprintln!("error: {e}");
                }
            }
            ":vjp" => {
                if let Ok(c) = self.check("") {
                    match crate::vjp(
                        &c,
                        (!arg.is_empty()).then(|| arg.to_string()),
                        1,
                        "softmax_cross_entropy",
                        false,
                    ) {
                        Ok(t) => print!("{t}"),
                        Err(e) => crate::print_error(&e),
                    }
                }
            }
            ":ir" => {
                if let Ok(c) = self.check("") {
                    let net = crate::pick_net(&c, (!arg.is_empty()).then(|| arg.to_string()));
                    match net.map_err(crate::Failure::from).and_then(|n| {
                        nabla_lang::check::lower::lower_net(
                            &c.program,
                            0,
                            &n,
                            1,
                            nabla_lang::ir::Mode::Train,
                            None,
                        )
                        .map_err(|d| crate::Failure::Rendered(self.render(&c, &d)))
                    }) {
                        Ok(l) => print!("{}", nabla_lang::ir::print_graph(&l.graph)),
                        Err(e) => crate::print_error(&e),
                    }
                }
            }
            ":load" => match std::fs::read_to_string(arg) {
                Ok(text) => self.eval(&text),
                Err(e) => eprintln!("error: cannot read {arg}: {e}"),
            },
            ":device" => {
                if arg.is_empty() {
                    println!("tensor code runs on {}", self.backend.describe());
                } else {
                    match Dev::open(arg) {
                        Ok(d) => {
                            println!("tensor code now runs on {}", d.describe());
                            self.backend = d;
                        }
                        Err(e) => crate::print_error(&e),
                    }
                }
            }
            ":time" => {
                let t = Instant::now();
                self.eval(arg);
                println!("time: {:.3} ms", t.elapsed().as_secs_f64() * 1e3);
            }
            other => eprintln!("error: unknown command `{other}` (try :help)"),
        }
        true
    }

    /// One complete input: a command or code. `false` ends the session.
    fn input(&mut self, text: &str) -> bool {
        let t = text.trim();
        if t.is_empty() {
            return true;
        }
        if t.starts_with(':') {
            return self.command(t);
        }
        // One line break per input in the session text (the stdin reader keeps its own),
        // so an earlier input's `<repl>` line numbers count as the user typed them.
        self.eval(text.trim_end());
        true
    }
}

fn show_type(c: &Checked, t: &HTy) -> String {
    match t {
        HTy::Unit => "()".into(),
        HTy::Int => "int".into(),
        HTy::Float => "float".into(),
        HTy::Bool => "bool".into(),
        HTy::Str => "str".into(),
        HTy::Net => "net".into(),
        HTy::Record(id) | HTy::Opaque(id) => c.program.items[*id].name.clone(),
        HTy::List(t) => format!("[{}]", show_type(c, t)),
    }
}

/// rustyline's view of the session: completion and multi-line validation.
struct Assist {
    words: Vec<String>,
    fields: HashMap<String, Vec<String>>,
}

impl Completer for Assist {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == ':'))
            .map_or(0, |i| i + 1);
        let word = &before[start..];
        let pair = |s: &str| Pair {
            display: s.to_string(),
            replacement: s.to_string(),
        };
        if let Some((base, partial)) = word.rsplit_once('.') {
            let fields = self.fields.get(base).cloned().unwrap_or_default();
            let out = fields
                .iter()
                .filter(|f| f.starts_with(partial))
                .map(|f| pair(f))
                .collect();
            return Ok((start + base.len() + 1, out));
        }
        let pool: Box<dyn Iterator<Item = &str>> = if word.starts_with(':') {
            Box::new(COMMANDS.iter().copied())
        } else {
            Box::new(self.words.iter().map(String::as_str))
        };
        Ok((
            start,
            pool.filter(|w| w.starts_with(word)).map(pair).collect(),
        ))
    }
}

impl Validator for Assist {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if incomplete(ctx.input()) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

impl Hinter for Assist {
    type Hint = String;
}

impl Highlighter for Assist {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Helper for Assist {}

fn history_file() -> Option<PathBuf> {
    std::env::var_os("NABLA_HISTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".nabla_history")))
}

/// Runs the REPL until `:quit` or end of input.
pub fn repl(data: Option<PathBuf>) -> Result<(), crate::Failure> {
    let mut session = Session::new(data);
    if !std::io::stdin().is_terminal() {
        // Piped input: whole inputs by the same bracket rule, no prompt.
        let mut pending = String::new();
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| e.to_string())?;
            pending.push_str(&line);
            pending.push('\n');
            if incomplete(&pending) {
                continue;
            }
            let input = std::mem::take(&mut pending);
            if !session.input(&input) {
                return Ok(());
            }
        }
        if !pending.trim().is_empty() {
            session.input(&pending);
        }
        return Ok(());
    }
    let mut rl: Editor<Assist, rustyline::history::DefaultHistory> =
        Editor::new().map_err(|e| e.to_string())?;
    let history = history_file();
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    println!(
        "nabla {} — :help for commands, Ctrl-D to leave",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        rl.set_helper(Some(Assist {
            words: session.words.clone(),
            fields: session.fields.clone(),
        }));
        match rl.readline("nabla> ") {
            Ok(line) => {
                let _ = rl.add_history_entry(line.as_str());
                if let Some(h) = &history {
                    let _ = rl.save_history(h);
                }
                if !session.input(&line) {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.to_string().into()),
        }
    }
    Ok(())
}

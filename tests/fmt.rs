//! `nabla fmt`: the examples and the standard library are formatted, formatting is
//! idempotent on every source in the repository that parses, and `--check` reports
//! without writing.

use std::path::Path;
use std::process::Command;

use nabla_lang::syntax::format::format;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "net") {
            out.push(p);
        }
    }
}

#[test]
fn examples_and_the_standard_library_are_formatted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![];
    sources(&root.join("examples"), &mut files);
    sources(&root.join("bench"), &mut files);
    assert!(files.len() >= 9);
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        assert_eq!(
            format(&text).as_deref(),
            Ok(text.as_str()),
            "{} is not formatted (run `nabla fmt {}`)",
            f.display(),
            f.display()
        );
    }
    for (name, text) in nabla_stdlib::MODULES {
        assert_eq!(
            format(text).as_deref(),
            Ok(*text),
            "{name} is not formatted"
        );
    }
}

#[test]
fn formatting_is_idempotent_on_every_source_that_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![];
    sources(&root.join("tests"), &mut files);
    let mut formatted = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read").replace("$0", "");
        if let Ok(once) = format(&text) {
            assert_eq!(
                format(&once).as_deref(),
                Ok(once.as_str()),
                "{}: formatting twice differs",
                f.display()
            );
            formatted += 1;
        }
    }
    assert!(
        formatted > 20,
        "only {formatted} of {} test sources parse",
        files.len()
    );
}

#[test]
fn fmt_check_reports_and_fmt_writes() {
    let dir = std::env::temp_dir().join(format!("nabla-fmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("a.net");
    std::fs::write(&f, "let x=1\n").expect("write");
    let nabla = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_nabla"))
            .arg("fmt")
            .args(args)
            .arg(&dir)
            .output()
            .expect("run")
    };
    let out = nabla(&["--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("a.net: not formatted"));
    assert_eq!(
        std::fs::read_to_string(&f).expect("read"),
        "let x=1\n",
        "--check writes nothing"
    );
    assert_eq!(nabla(&[]).status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&f).expect("read"), "let x = 1\n");
    assert_eq!(nabla(&["--check"]).status.code(), Some(0));
    std::fs::write(&f, "net N: f32[4] -> {\n").expect("write");
    let out = nabla(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot format a file with errors"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[E0"),
        "the syntax error is shown with its code: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&f).expect("read"),
        "net N: f32[4] -> {\n",
        "a broken file is left alone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Comments anywhere survive formatting: block comments are inserted between random
/// tokens (inside expressions, parameter lists, lists, before statements, spanning lines)
/// and line comments at random line ends, into every example and standard module. Each
/// file must format, keep every comment once and in order, keep its tokens, and format to
/// itself again. `nabla fmt` used to delete block comments between tokens and report
/// success.
#[test]
fn every_comment_survives_formatting() {
    use nabla_lang::syntax::token::lex_with_comments;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts: Vec<(String, String)> = nabla_stdlib::MODULES
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    let mut files = vec![];
    sources(&root.join("examples"), &mut files);
    for f in files {
        texts.push((
            f.display().to_string(),
            std::fs::read_to_string(&f).expect("read"),
        ));
    }
    let blocks = [
        "/* c */",
        "/**/",
        "/* — é 💥 */",
        "/* a * b / c // not a line comment */",
        "/* spans\n   two lines */",
        "/*\n*/",
    ];
    let mut rng = Rng(0xc0_44e7);
    let mut files_checked = 0;
    for (name, text) in &texts {
        for round in 0..12 {
            let (tokens, _, _) = lex_with_comments(text);
            // Insert at token boundaries from the end, so earlier offsets stay valid.
            let mut at: Vec<usize> = (0..8)
                .map(|_| tokens[rng.below(tokens.len())].1.start)
                .collect();
            at.sort_unstable();
            at.dedup();
            let mut src = text.clone();
            let mut inserted = vec![];
            for &pos in at.iter().rev() {
                let c = *rng.pick(&blocks);
                let pad = *rng.pick(&["", " ", "  "]);
                src.insert_str(pos, &format!("{c}{pad}"));
                inserted.push(c);
            }
            // And a line comment at the end of some lines.
            let mut lines: Vec<String> = src.split('\n').map(str::to_string).collect();
            for _ in 0..3 {
                let l = rng.below(lines.len());
                if !lines[l].trim_end().ends_with("*/") && !lines[l].contains("//") {
                    lines[l].push_str(" // note — ✓");
                }
            }
            let src = lines.join("\n");
            let (_, comments, errors) = lex_with_comments(&src);
            assert!(errors.is_empty(), "{name} #{round}: {errors:?}");
            let out = format(&src).unwrap_or_else(|e| panic!("{name} #{round}: {e}\n{src}"));
            let (out_tokens, out_comments, _) = lex_with_comments(&out);
            let texts_of = |s: &str, rs: &[std::ops::Range<usize>]| -> Vec<String> {
                rs.iter().map(|r| s[r.clone()].to_string()).collect()
            };
            assert_eq!(
                texts_of(&out, &out_comments),
                texts_of(&src, &comments),
                "{name} #{round}: comments changed\n{out}"
            );
            let (src_tokens, _, _) = lex_with_comments(&src);
            assert!(
                out_tokens
                    .iter()
                    .map(|t| &t.0)
                    .eq(src_tokens.iter().map(|t| &t.0)),
                "{name} #{round}: tokens changed"
            );
            assert_eq!(
                format(&out).as_deref(),
                Ok(out.as_str()),
                "{name} #{round}: not idempotent"
            );
            files_checked += 1;
        }
    }
    assert!(files_checked > 150, "{files_checked}");
}

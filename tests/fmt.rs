//! `nabla fmt`: the examples and the standard library are formatted, formatting is
//! idempotent on every source in the repository that parses, and `--check` reports
//! without writing.

use std::path::Path;
use std::process::Command;

use nabla_lang::syntax::format::format;

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

//! Snapshot tests: each `tests/diagnostics/*.net` is checked and its rendered diagnostics
//! (plain text, no color) are compared with `tests/snapshots/`.

use nabla_lang::check::check_source;
use nabla_lang::diag::render;

#[test]
fn diagnostics() {
    insta::glob!("diagnostics/*.net", |path| {
        let text = std::fs::read_to_string(path).expect("read case");
        let name = format!(
            "tests/diagnostics/{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("case")
        );
        let checked = check_source(&name, &text, &nabla_stdlib::StdLoader);
        let mut out = String::new();
        for d in &checked.diagnostics {
            out.push_str(&render(d, &checked.program.sources, false));
        }
        if out.is_empty() {
            out.push_str("(no diagnostics)\n");
        }
        insta::assert_snapshot!(out);
    });
}

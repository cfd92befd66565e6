//! Bounded fuzzing of the front end: random bytes, and the examples mutated by deleting,
//! duplicating and truncating tokens. Every input must be checked without a panic and
//! within the time bound (1 s per file in release builds, as the issue asks; debug builds
//! are about 10× slower, so they get 10 s).

use std::time::{Duration, Instant};

use nabla_lang::check::check_source;
use nabla_lang::syntax::token::lex;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn bound() -> Duration {
    if cfg!(debug_assertions) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(1)
    }
}

fn check_one(label: &str, text: &str) {
    let start = Instant::now();
    let checked = check_source("fuzz.net", text, &nabla_stdlib::StdLoader);
    let took = start.elapsed();
    assert!(took < bound(), "{label}: took {took:?}");
    // Every diagnostic renders, and points inside its file.
    for d in &checked.diagnostics {
        let _ = nabla_lang::diag::render(d, &checked.program.sources, false);
        if let Some(s) = d.span() {
            assert!(
                s.start <= s.end && s.end <= checked.program.sources.text(s.file).len(),
                "{label}: bad span {s:?} in {d:?}"
            );
        }
    }
}

fn examples() -> Vec<(String, String)> {
    let dir = format!("{}/examples", env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("examples dir").flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "net") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).expect("read"),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn random_bytes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet = b"abcxyz_019 \n\t(){}[]<>|@.,;:=+-*/%!&\"'\\#$fnletlayernetrule";
    for i in 0..300 {
        let len = rng.below(1500);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if rng.below(4) == 0 {
                    rng.next() as u8
                } else {
                    alphabet[rng.below(alphabet.len())]
                }
            })
            .collect();
        check_one(&format!("random #{i}"), &String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn mutated_examples() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for (name, text) in examples() {
        let (tokens, _) = lex(&text);
        for round in 0..12 {
            let mut t = text.clone();
            match round % 3 {
                // Delete a run of tokens.
                0 => {
                    let a = rng.below(tokens.len());
                    let b = (a + 1 + rng.below(4)).min(tokens.len());
                    let (s, e) = (tokens[a].1.start, tokens[b - 1].1.end);
                    t.replace_range(s..e, "");
                }
                // Duplicate a run of tokens.
                1 => {
                    let a = rng.below(tokens.len());
                    let b = (a + 1 + rng.below(6)).min(tokens.len());
                    let (s, e) = (tokens[a].1.start, tokens[b - 1].1.end);
                    let dup = t[s..e].to_string();
                    t.insert_str(e, &format!(" {dup}"));
                }
                // Truncate at a token boundary.
                _ => {
                    let a = rng.below(tokens.len());
                    t.truncate(tokens[a].1.start);
                }
            }
            check_one(&format!("{name} mutation {round}"), &t);
        }
    }
}

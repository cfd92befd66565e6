//! Deep input: every shape of nesting (operator chains, prefix operators, brackets,
//! calls, `else if`, blocks, lists, index chains, dims, types, stage
//! groups, string interpolations) at depths under the limit, near it and far past it, in
//! `check`, `run`, the REPL and the language server; and recursion in host code. Under
//! the limit a program runs and prints the right value; past it, E0003; never an abort.

use super::{on_file, repl, scratch};

/// A program whose one expression nests about `n` levels, and the value it prints (when
/// the shape is host arithmetic).
fn program(kind: &str, n: usize) -> (String, Option<String>) {
    let rep = |s: &str, k: usize| s.repeat(k);
    match kind {
        "plus" => (
            format!("let x = {}\nprint(x)\n", vec!["1"; n].join(" + ")),
            Some(n.to_string()),
        ),
        "minus" => (
            format!("let x = {}1\nprint(x)\n", rep("-", n)),
            Some(if n.is_multiple_of(2) { "1" } else { "-1" }.into()),
        ),
        "parens" => (
            format!("let x = {}7{}\nprint(x)\n", rep("(", n), rep(")", n)),
            Some("7".into()),
        ),
        "calls" => (
            format!(
                "fn f(a: int) -> int {{ a + 1 }}\nlet x = {}0{}\nprint(x)\n",
                rep("f(", n),
                rep(")", n)
            ),
            Some(n.to_string()),
        ),
        "elseif" => {
            let arms: Vec<String> = (0..n).map(|i| format!("if v == {i} {{ {i} }}")).collect();
            (
                format!(
                    "let v = {}\nlet x = {} else {{ -1 }}\nprint(x)\n",
                    n / 2,
                    arms.join(" else ")
                ),
                Some((n / 2).to_string()),
            )
        }
        "blocks" => (
            format!("let x = {}3{}\nprint(x)\n", rep("{ ", n), rep(" }", n)),
            Some("3".into()),
        ),
        "lists" => (
            format!("let x = {}1{}\nprint(\"ok\")\n", rep("[", n), rep("]", n)),
            Some("ok".into()),
        ),
        "index" => (
            format!("let l = [1, 2]\nlet x = l{}\nprint(x)\n", rep("[0]", n)),
            None,
        ),
        "strings" => (
            format!("let x = {}1{}\nprint(x)\n", rep("\"{", n), rep("}\"", n)),
            Some("1".into()),
        ),
        "dims" => (
            format!(
                "import std.nn.*\nnet A: f32[{}] -> f32[2] {{\n  dense(2)\n}}\n",
                vec!["1"; n].join(" + ")
            ),
            None,
        ),
        "types" => (
            format!(
                "fn f(x: {}int{}) -> int {{ 1 }}\nprint(f)\n",
                rep("[", n),
                rep("]", n)
            ),
            None,
        ),
        "stages" => (
            format!(
                "import std.nn.*\nnet A: f32[4] -> f32[4] {{\n{}  relu\n{}}}\n",
                rep("  (\n", n),
                rep("  )\n", n)
            ),
            None,
        ),
        "tensor" => (
            format!(
                "import std.nn.*\nfn g(x: f32[B, 4]) -> f32[B, 4] {{ {} }}\nnet A: f32[4] -> f32[4] {{\n  g\n}}\nprint(\"ok\")\n",
                vec!["x"; n].join(" + ")
            ),
            Some("ok".into()),
        ),
        _ => unreachable!("{kind}"),
    }
}

const KINDS: &[&str] = &[
    "plus", "minus", "parens", "calls", "elseif", "blocks", "lists", "index", "strings", "dims",
    "types", "stages", "tensor",
];

/// How deep each kind may go before E0003. Each `{ }` is three levels (block, statement,
/// expression), an `else if` one; parentheses and a stage group of one stage add no node to
/// the tree, so any number of them works; interpolations have their own limit.
fn limit(kind: &str) -> usize {
    match kind {
        "parens" | "stages" => usize::MAX / 16,
        "strings" => 16,
        "blocks" => 256 / 3,
        _ => 256,
    }
}

#[test]
fn deep_input_works_under_the_limit_and_is_e0003_past_it() {
    let dir = scratch("depth");
    let mut checked = 0;
    for kind in KINDS {
        for n in [12, 60, 200, 2_000, 60_000] {
            let (src, value) = program(kind, n);
            let name = format!("{kind}{n}.net");
            let c = on_file(&dir, &name, &src, &["check"]);
            c.assert_no_crash(&format!("check {kind} {n}"));
            let deep = c.codes().iter().any(|k| k == "E0003");
            if n * 10 <= limit(kind) * 9 {
                assert!(!deep, "{kind} {n} is under the limit: {}", c.err);
            } else if n * 10 >= limit(kind) * 11 {
                assert!(deep, "{kind} {n} is past the limit: {:?}", c.codes());
            }
            if let (Some(v), false) = (value, deep) {
                let r = on_file(&dir, &name, &src, &["run"]);
                r.assert_no_crash(&format!("run {kind} {n}"));
                assert_eq!(r.out.trim(), v, "{kind} {n}: {}", r.err);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, KINDS.len() * 5);
}

#[test]
fn deep_input_in_the_repl_leaves_the_session_working() {
    let dir = scratch("depth-repl");
    let mut input = String::from("let keep = 41\n");
    for kind in ["plus", "minus", "calls", "lists"] {
        for n in [200, 50_000] {
            let (src, _) = program(kind, n);
            // One input per line: the program's lines joined (each is complete).
            input.push_str(&src);
        }
    }
    input.push_str("print(keep + 1)\n");
    let r = repl(&dir, &input);
    r.assert_no_crash("repl");
    assert!(r.out.lines().any(|l| l == "42"), "{}\n{}", r.out, r.err);
    assert!(r.codes().iter().any(|c| c == "E0003"), "{}", r.err);
}

#[test]
fn recursion_in_host_code_is_an_error_not_an_abort() {
    let dir = scratch("recursion");
    let cases = [
        // Unbounded, direct and mutual.
        ("fn f(n: int) -> int { f(n + 1) + 1 }\nprint(f(0))\n", None),
        (
            "fn f(n: int) -> int { g(n + 1) }\nfn g(n: int) -> int { f(n + 1) }\nprint(f(0))\n",
            None,
        ),
        // Deep but bounded: runs.
        (
            "fn f(n: int) -> int { if n == 0 { return 0 } f(n - 1) + 1 }\nprint(f(100000))\n",
            Some("100000"),
        ),
        // Unbounded with a float and a string on the way.
        (
            "fn f(x: float, s: str) -> float { f(x * 1.5, s) }\nprint(f(1.0, \"s\"))\n",
            None,
        ),
    ];
    for (i, (src, want)) in cases.iter().enumerate() {
        let r = on_file(&dir, &format!("r{i}.net"), src, &["run"]);
        r.assert_no_crash(&format!("case {i}"));
        match want {
            Some(v) => assert_eq!(r.out.trim(), *v, "case {i}: {}", r.err),
            None => {
                assert_eq!(r.code, Some(1), "case {i}");
                assert!(
                    r.err.contains("[E0701]") && r.err.contains("stack overflow"),
                    "case {i}: {}",
                    r.err
                );
            }
        }
    }
    // In the REPL: the session survives and keeps its definitions.
    let r = repl(
        &dir,
        "let keep = 7\nfn f(n: int) -> int { f(n + 1) + 1 }\nprint(f(0))\nprint(keep * 6)\n",
    );
    r.assert_no_crash("repl recursion");
    assert!(r.err.contains("stack overflow"), "{}", r.err);
    assert!(r.out.lines().any(|l| l == "42"), "{}\n{}", r.out, r.err);
}

#[test]
fn deep_input_in_the_language_server_is_a_diagnostic() {
    #[path = "../lsp/client.rs"]
    mod client;
    let mut c = client::Client::start("hostile-depth");
    for (i, kind) in ["plus", "minus", "lists", "elseif", "strings"]
        .iter()
        .enumerate()
    {
        let (deep, _) = program(kind, 30_000);
        let uri = c.open(&format!("d{i}.net"), &deep);
        let diags = c.diagnostics(&uri);
        assert!(
            diags.iter().any(|d| d["code"] == "E0003"),
            "{kind}: {diags:?}"
        );
        let id = c.send_request(
            "textDocument/semanticTokens/full",
            serde_json::json!({ "textDocument": { "uri": uri } }),
        );
        assert!(c.response(id).get("result").is_some());
    }
    assert!(c.alive());
    c.shutdown();
}

//! Every derivative rule of the standard library passes a finite-difference check in f64.

use nabla_lang::check::check_source;
use nabla_lang::gradcheck::check_rules;

#[test]
fn every_rule_passes_gradcheck() {
    let c = check_source("empty.net", "import std.nn.*\n", &nabla_stdlib::StdLoader);
    assert!(c.diagnostics.is_empty());
    let findings = check_rules(&c.program, None);
    // Every rule of the standard library: 38 in std.rules and softmax_cross_entropy's
    // closed form in std.nn (adding a rule changes this).
    assert_eq!(findings.len(), 39, "rules");
    let mut failures = Vec::new();
    for f in &findings {
        match &f.result {
            Ok(items) => {
                let worst = items.iter().map(|i| i.worst).fold(0.0, f64::max);
                eprintln!("rule {:<24} worst relative error {worst:.2e}", f.rule);
                if worst > 1e-6 || items.is_empty() {
                    failures.push(format!("{}: {worst:e}", f.rule));
                }
            }
            Err(e) if e == nabla_lang::gradcheck::NOT_DIFFERENTIATED => {
                eprintln!("rule {:<24} {e}", f.rule)
            }
            Err(e) => failures.push(format!("{}: {e}", f.rule)),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Closed-form rules of composite functions agree with the VJP derived from their bodies.
#[test]
fn closed_form_rules_agree_with_their_derivations() {
    let c = check_source("empty.net", "import std.nn.*\n", &nabla_stdlib::StdLoader);
    let mut checked = 0;
    for m in &c.program.modules {
        for rid in &m.rules {
            if let Some(r) = nabla_lang::gradcheck::composite_discrepancy(&c.program, *rid) {
                let (d, which) = r.expect("instantiates");
                eprintln!("{}: {which} differs by {d:.2e}", c.program.items[*rid].name);
                assert!(
                    d <= nabla_lang::check::CLOSED_FORM_TOLERANCE,
                    "{}: {d:e}",
                    c.program.items[*rid].name
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 1,
        "softmax_cross_entropy's rule is a closed form"
    );
}

/// Every op the op table says has a rule names one that exists and passes the check
/// above; the others are the ops AD must never differentiate.
#[test]
fn every_rule_in_the_op_table_exists() {
    use nabla_lang::ir::Op;
    use nabla_lang::ir::ops::Gradient;
    let c = check_source("empty.net", "import std.nn.*\n", &nabla_stdlib::StdLoader);
    let rules: Vec<String> = check_rules(&c.program, None)
        .into_iter()
        .map(|f| f.rule)
        .collect();
    for op in Op::representatives() {
        if let Gradient::Rule(rule) = op.row().gradient {
            assert!(
                rules.iter().any(|r| r == rule),
                "{}: no rule `{rule}`",
                op.name()
            );
        }
    }
}

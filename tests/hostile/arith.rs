//! Compile-time arithmetic and formats: random constant expressions near the ends of the
//! 64-bit range, in host code and in dims, are either exact (checked against 128-bit
//! arithmetic) or E0313 (E0305 for a division by zero); formats with any precision are
//! shown or refused with E0602. Never a panic.

use super::rng::Rng;
use super::{on_file, scratch};

const EDGES: &[i64] = &[
    i64::MIN,
    i64::MIN + 1,
    -(1 << 62),
    -(1 << 32),
    -3,
    -1,
    0,
    1,
    2,
    3,
    1 << 31,
    1 << 32,
    1 << 62,
    i64::MAX - 1,
    i64::MAX,
];

/// A literal for `v` (the lexer reads no negative literals, and `i64::MIN` has no positive
/// counterpart).
fn lit(v: i64) -> String {
    if v == i64::MIN {
        format!("({} - 1)", i64::MIN + 1)
    } else if v < 0 {
        format!("({v})")
    } else {
        v.to_string()
    }
}

fn floor(x: i128, y: i128) -> i128 {
    x.div_euclid(y) - i128::from(y < 0 && x.rem_euclid(y) != 0)
}

/// A random expression over edge values: its text, its exact value (None when a step
/// fails) and the errors the checker reports for it, in order. An operand that failed
/// makes its operation fail silently (the error is not repeated).
fn expr(rng: &mut Rng, depth: u32) -> (String, Option<i64>, Vec<&'static str>) {
    if depth == 0 || rng.below(3) == 0 {
        let v = *rng.pick(EDGES);
        return (lit(v), Some(v), vec![]);
    }
    let (a, va, mut errs) = expr(rng, depth - 1);
    let (b, vb, eb) = expr(rng, depth - 1);
    errs.extend(eb);
    let op = *rng.pick(&["+", "-", "*", "/", "%"]);
    let v = match (va, vb) {
        (Some(x), Some(y)) => {
            let (x, y) = (x as i128, y as i128);
            let r = match op {
                "+" => Some(x + y),
                "-" => Some(x - y),
                "*" => Some(x * y),
                _ if y == 0 => None,
                // Floor division, and its remainder with the divisor's sign.
                "/" => Some(floor(x, y)),
                _ => Some(x - floor(x, y) * y),
            };
            match r.map(i64::try_from) {
                None => {
                    errs.push("E0305");
                    None
                }
                Some(Err(_)) => {
                    errs.push("E0313");
                    None
                }
                Some(Ok(v)) => Some(v),
            }
        }
        _ => None,
    };
    (format!("({a} {op} {b})"), v, errs)
}

#[test]
fn constant_arithmetic_is_exact_or_an_error() {
    let dir = scratch("arith");
    let mut rng = Rng(0xa417);
    let (mut exact, mut refused) = (0, 0);
    // Many expressions per file (one per line, each its own `let`), a few files.
    for file in 0..6 {
        let mut src = String::new();
        let mut want = vec![];
        let mut expected = vec![];
        for i in 0..60 {
            let (e, v, errs) = expr(&mut rng, 3);
            src.push_str(&format!("let v{i} = {e}\n"));
            want.push(v);
            expected.extend(errs);
        }
        let r = on_file(&dir, &format!("a{file}.net"), &src, &["check"]);
        r.assert_no_crash(&format!("file {file}"));
        assert_eq!(r.codes(), expected, "file {file}:\n{src}\n{}", r.err);
        exact += want.iter().filter(|v| v.is_some()).count();
        refused += want.iter().filter(|v| v.is_none()).count();
        // The exact ones print their values when run.
        let mut ok_src = String::new();
        let mut values = vec![];
        for (i, v) in want.iter().enumerate() {
            if let Some(v) = v {
                let line = src.lines().nth(i).unwrap_or_default();
                ok_src.push_str(&format!("{line}\nprint(v{i})\n"));
                values.push(v.to_string());
            }
        }
        let r = on_file(&dir, &format!("ok{file}.net"), &ok_src, &["run"]);
        r.assert_no_crash(&format!("run {file}"));
        assert_eq!(r.out.lines().collect::<Vec<_>>(), values, "{}", r.err);
    }
    assert!(
        exact > 50 && refused > 50,
        "{exact} exact, {refused} refused"
    );
}

#[test]
fn dims_that_overflow_are_e0313() {
    let dir = scratch("dims");
    let mut rng = Rng(0xd1);
    for i in 0..20 {
        let a = 1i64 << rng.range(20, 40);
        let b = 1i64 << rng.range(20, 40);
        let fits = (a as i128) * (b as i128) <= i64::MAX as i128;
        // A tensor type whose element count is a·b, written directly and built by a layer.
        let src = format!(
            "import std.nn.*\nfn f(x: f32[{a}, {b}]) -> f32[{a}, {b}] {{ x }}\nnet N: f32[{a}] -> f32[2] {{\n  dense(2)\n}}\nnet M: f32[2] -> f32[{b}] {{\n  dense({b})\n}}\n"
        );
        let r = on_file(&dir, &format!("d{i}.net"), &src, &["check"]);
        r.assert_no_crash(&format!("dims {a} x {b}"));
        assert_eq!(
            r.codes().iter().any(|c| c == "E0313"),
            !fits,
            "{a} x {b}: {}",
            r.err
        );
    }
}

#[test]
fn any_format_precision_is_shown_or_refused() {
    let dir = scratch("formats");
    for (i, p) in [
        "0",
        "1",
        "17",
        "340",
        "1074",
        "1075",
        "65535",
        "65536",
        "99999",
        "18446744073709551616",
    ]
    .iter()
    .enumerate()
    {
        for spec in [format!(".{p}"), format!(".{p}e"), format!(".{p}%")] {
            let src = format!("let x = 1.5\nprint(\"{{x:{spec}}}\")\n");
            let r = on_file(&dir, &format!("f{i}.net"), &src, &["run"]);
            r.assert_no_crash(&spec);
            let n: u128 = p.parse().unwrap_or(u128::MAX);
            if n <= 1074 {
                assert_eq!(r.code, Some(0), "{spec}: {}", r.err);
            } else {
                assert!(r.codes() == ["E0602"], "{spec}: {}", r.err);
            }
        }
    }
}

//! Shapes that cannot exist: convolutions and pools with every combination of kernel,
//! stride, padding, dilation and input size, including zero, negative and oversized
//! values. Each is accepted by `nabla check` exactly when PyTorch's rules accept it, with
//! the output size PyTorch gives; otherwise it is E0314 (or E0315 for a size argument
//! below 1), never a run-time message.

use super::rng::Rng;
use super::{on_file, scratch};

/// PyTorch's output size for a convolution, or None when it refuses the configuration.
fn conv_out(h: i64, k: i64, s: i64, p: i64, d: i64) -> Option<i64> {
    if k < 1 || s < 1 || p < 0 || d < 1 {
        return None;
    }
    let o = (h + 2 * p - d * (k - 1) - 1).div_euclid(s) + 1;
    (h + 2 * p > d * (k - 1) && o >= 1).then_some(o)
}

/// PyTorch's output size for a pool, or None (padding at most half the window).
fn pool_out(h: i64, k: i64, s: i64, p: i64) -> Option<i64> {
    if k < 1 || s < 1 || p < 0 || 2 * p > k || h + 2 * p < k {
        return None;
    }
    Some((h + 2 * p - k).div_euclid(s) + 1)
}

#[test]
fn conv_and_pool_configurations_are_checked_as_pytorch_does() {
    let dir = scratch("shapes");
    let mut rng = Rng(0x5a9e);
    let values = [-2i64, -1, 0, 1, 2, 3, 5, 7, 9];
    let (mut accepted, mut refused) = (0, 0);
    // Several configurations per file, each its own net, so one file checks many.
    for file in 0..10 {
        let mut src = String::from("import std.nn.*\n");
        let mut expect = vec![];
        for i in 0..12 {
            let h = *rng.pick(&[1i64, 2, 4, 5, 8]);
            let (k, s, p, d) = (
                *rng.pick(&values),
                *rng.pick(&values),
                *rng.pick(&values),
                *rng.pick(&values),
            );
            let (layer, out) = match rng.below(3) {
                0 => (
                    format!("conv(4, {k}, stride: {s}, pad: {p}, dilation: {d})"),
                    conv_out(h, k, s, p, d),
                ),
                1 => (
                    format!("maxpool({k}, stride: {s}, pad: {p})"),
                    pool_out(h, k, s, p),
                ),
                _ => (
                    format!("avgpool({k}, stride: {s}, pad: {p})"),
                    pool_out(h, k, s, p),
                ),
            };
            src.push_str(&format!(
                "net N{i}: f32[2, {h}, {h}] -> f32[3] {{\n  {layer}\n  flatten\n  dense(3)\n}}\n"
            ));
            expect.push((layer, h, out));
        }
        let r = on_file(&dir, &format!("s{file}.net"), &src, &["check"]);
        r.assert_no_crash(&format!("file {file}"));
        let errors = r.codes();
        let bad = expect.iter().filter(|e| e.2.is_none()).count();
        assert!(
            errors.iter().all(|c| c == "E0314" || c == "E0315"),
            "file {file}: {errors:?}\n{}",
            r.err
        );
        // One error per refused net (the first condition that fails), none for the rest.
        assert_eq!(errors.len(), bad, "file {file}:\n{src}\n{}", r.err);
        // The accepted ones, alone in a file, have PyTorch's output size.
        let mut ok_src = String::from("import std.nn.*\n");
        for (i, (layer, h, out)) in expect.iter().enumerate() {
            if out.is_some() {
                ok_src.push_str(&format!(
                    "net N{i}: f32[2, {h}, {h}] -> f32[3] {{\n  {layer}\n  flatten\n  dense(3)\n}}\n"
                ));
            }
        }
        let info = on_file(&dir, &format!("ok{file}.net"), &ok_src, &["info"]);
        for (i, (layer, h, out)) in expect.iter().enumerate() {
            let Some(o) = out else {
                refused += 1;
                continue;
            };
            // The net's block in `info`: its header line, then its stages.
            let block = info
                .out
                .split("\n\n")
                .find(|b| b.starts_with(&format!("net N{i}:")))
                .unwrap_or_else(|| {
                    panic!(
                        "N{i} ({layer} on {h}x{h}) missing:\n{}\n{}",
                        info.out, info.err
                    )
                });
            let c = if layer.starts_with("conv") { 4 } else { 2 };
            let want = format!("f32[B, {c}, {o}, {o}]");
            assert!(
                block.contains(&want),
                "{layer} on {h}x{h}: want {want}\n{block}"
            );
            accepted += 1;
        }
    }
    assert!(
        accepted > 10 && refused > 50,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn refused_shapes_name_the_sizes() {
    let dir = scratch("shapes-msg");
    let src = "import std.nn.*\nnet A: f32[3, 4, 4] -> f32[10] {\n  conv(8, 7)\n  global_avg_pool\n  dense(10)\n}\n";
    let r = on_file(&dir, "a.net", src, &["check"]);
    assert!(
        r.err.contains("H = 4") && r.err.contains("KH = 7"),
        "{}",
        r.err
    );
    assert!(r.err.contains("a.net:3:3"), "points at the use: {}", r.err);
    // A size argument below 1 is refused where it is passed.
    for (layer, code) in [
        ("flatten\n  dense(0)", "E0315"),
        ("flatten\n  dense(-3)", "E0315"),
        ("conv(-1, 3)\n  flatten", "E0315"),
        ("conv(4, 3, groups: 0)\n  flatten", "E0314"),
    ] {
        let src = format!(
            "import std.nn.*\nnet A: f32[3, 4, 4] -> f32[10] {{\n  {layer}\n  dense(10)\n}}\n"
        );
        let r = on_file(&dir, "b.net", &src, &["check"]);
        r.assert_no_crash(layer);
        assert_eq!(r.codes(), [code], "{layer}: {}", r.err);
    }
}

//! Recipe values outside their domain: every field of `TrainConfig`, `Optimizer`,
//! `Schedule` and `Augment`, with values below, above and beside its domain (negative,
//! zero where it divides, NaN, infinity, unknown kinds), each stops training before its
//! first step with an error that names the field; a dataset with no examples is an error,
//! not `NaN%`. Good recipes pass the same check.

use super::{on_file, scratch};

const HEAD: &str = "import std.nn.*\nimport std.data.*\nnet L: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(10)\n}\nlet nan = 0.0 / 0.0\nlet inf = 1.0 / 0.0\n";

/// (the config's fields, the field the error must name).
const BAD: &[(&str, &str)] = &[
    ("batch: 0", "TrainConfig.batch"),
    ("batch: -5", "TrainConfig.batch"),
    ("batch: 9223372036854775807", "TrainConfig.batch"),
    ("epochs: -1", "TrainConfig.epochs"),
    ("warmup_epochs: -2", "TrainConfig.warmup_epochs"),
    ("eval_every: -1", "TrainConfig.eval_every"),
    ("label_smoothing: 1.0", "TrainConfig.label_smoothing"),
    ("label_smoothing: -0.1", "TrainConfig.label_smoothing"),
    ("label_smoothing: nan", "TrainConfig.label_smoothing"),
    ("precision: \"fp16\"", "TrainConfig.precision"),
    ("precision: \"\"", "TrainConfig.precision"),
    ("optimizer: sgd(lr: -0.1)", "Optimizer.lr"),
    ("optimizer: sgd(lr: nan)", "Optimizer.lr"),
    ("optimizer: sgd(lr: inf)", "Optimizer.lr"),
    (
        "optimizer: momentum(lr: 0.1, momentum: 1.5)",
        "Optimizer.momentum",
    ),
    (
        "optimizer: momentum(lr: 0.1, momentum: -0.5)",
        "Optimizer.momentum",
    ),
    (
        "optimizer: Optimizer { kind: \"sgd\", lr: 0.1, nesterov: true }",
        "Optimizer.nesterov",
    ),
    ("optimizer: adam(beta1: 1.0)", "Optimizer.beta1"),
    ("optimizer: adam(beta2: -0.1)", "Optimizer.beta2"),
    ("optimizer: adam(eps: -1e-8)", "Optimizer.eps"),
    ("optimizer: adam(eps: 0.0)", "Optimizer.eps"),
    (
        "optimizer: adam(weight_decay: -0.01)",
        "Optimizer.weight_decay",
    ),
    (
        "optimizer: sgd(lr: 0.1, weight_decay: nan)",
        "Optimizer.weight_decay",
    ),
    (
        "optimizer: sgd(lr: 0.1, clip_norm: -1.0)",
        "Optimizer.clip_norm",
    ),
    (
        "optimizer: Optimizer { kind: \"sgdd\", lr: 0.1 }",
        "Optimizer.kind",
    ),
    (
        "optimizer: Optimizer { kind: \"\", lr: 0.1 }",
        "Optimizer.kind",
    ),
    ("schedule: Schedule { kind: \"cosin\" }", "Schedule.kind"),
    ("schedule: step(0)", "Schedule.every"),
    ("schedule: step(-3)", "Schedule.every"),
    ("schedule: step(2, gamma: 0.0)", "Schedule.gamma"),
    ("schedule: step(2, gamma: -0.5)", "Schedule.gamma"),
    ("schedule: cosine(floor: 2.0)", "Schedule.floor"),
    ("schedule: cosine(floor: -1.0)", "Schedule.floor"),
    ("augment: [random_crop(pad: -1)]", "augment[0].pad"),
    (
        "augment: [hflip(), random_crop(pad: 28)]",
        "random_crop's pad",
    ),
    ("augment: [hflip(p: 7.0)]", "augment[0].p"),
    ("augment: [hflip(p: -0.5)]", "augment[0].p"),
    ("augment: [hflip(p: nan)]", "augment[0].p"),
    ("augment: [Augment { kind: \"rotate\" }]", "augment[0].kind"),
    ("normalize_mean: [0.5], normalize_std: []", "normalize_mean"),
    (
        "normalize_mean: [0.5], normalize_std: [0.0]",
        "normalize_std[0]",
    ),
    (
        "normalize_mean: [0.5], normalize_std: [-1.0]",
        "normalize_std[0]",
    ),
    (
        "normalize_mean: [nan], normalize_std: [1.0]",
        "normalize_mean[0]",
    ),
    (
        "normalize_mean: [0.5, 0.5, 0.5], normalize_std: [0.2, 0.2, 0.2]",
        "channels",
    ),
    (
        "checkpoint: \"no/such/dir/ck.safetensors\"",
        "TrainConfig.checkpoint",
    ),
    ("checkpoint: \".\"", "TrainConfig.checkpoint"),
];

const GOOD: &[&str] = &[
    "batch: 1",
    "epochs: 0",
    "optimizer: nesterov(lr: 0.05)",
    "optimizer: adamw(lr: 0.001)",
    "schedule: cosine(floor: 0.1), warmup_epochs: 2",
    "schedule: step(3, gamma: 0.5)",
    "augment: [random_crop(pad: 4), hflip(p: 1.0)], label_smoothing: 0.1",
    "normalize_mean: [0.13], normalize_std: [0.31]",
    "checkpoint: \"ck.safetensors\"",
];

#[test]
fn every_out_of_domain_field_stops_training_before_it_starts() {
    let dir = scratch("recipes");
    for (i, (fields, name)) in BAD.iter().enumerate() {
        let src = format!(
            "{HEAD}let m = train(L, mnist(), TrainConfig {{ {fields} }})\nprint(\"trained\")\n"
        );
        let r = on_file(&dir, &format!("b{i}.net"), &src, &["run"]);
        r.assert_no_crash(fields);
        assert_eq!(r.code, Some(1), "{fields}: {}\n{}", r.out, r.err);
        assert_eq!(r.codes(), ["E0701"], "{fields}: {}", r.err);
        assert!(
            r.err.contains(name),
            "{fields}: the error names {name}: {}",
            r.err
        );
        // Before any work: no epoch ran, nothing was printed.
        assert!(
            !r.out.contains("Epoch") && !r.out.contains("trained"),
            "{fields}: {}",
            r.out
        );
    }
    for (i, fields) in GOOD.iter().enumerate() {
        let src =
            format!("{HEAD}check_recipe(TrainConfig {{ {fields} }}, mnist())\nprint(\"ok\")\n");
        let r = on_file(&dir, &format!("g{i}.net"), &src, &["run"]);
        assert_eq!(r.out.trim(), "ok", "{fields}: {}", r.err);
    }
}

#[test]
fn a_dataset_without_examples_is_an_error_not_nan() {
    let dir = scratch("empty");
    for split in ["train", "val"] {
        std::fs::create_dir_all(dir.join("imgs").join(split).join("cat")).expect("dir");
    }
    // One image in the training split only.
    let png = dir.join("imgs/train/cat/a.png");
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, 4, 4);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().expect("header");
        w.write_image_data(&[128; 16]).expect("data");
    }
    std::fs::write(&png, bytes).expect("png");
    let net = "import std.nn.*\nimport std.data.*\nnet T: f32[3, 4, 4] -> f32[2] {\n  flatten\n  dense(2)\n}\n";
    let cases = [
        // Training on it: the empty test split is named before any step.
        "let d = image_folder(\"imgs\", size: 4)\nlet m = train(T, d, TrainConfig { batch: 1 })\n",
        // Asking for an accuracy directly.
        "let d = image_folder(\"imgs\", size: 4)\nlet m = init(T)\nprint(\"{accuracy(m, d.test):.2%}\")\n",
    ];
    for (i, src) in cases.iter().enumerate() {
        let r = on_file(&dir, &format!("e{i}.net"), &format!("{net}{src}"), &["run"]);
        r.assert_no_crash(src);
        assert_eq!(r.code, Some(1), "{src}: {}\n{}", r.out, r.err);
        assert!(r.err.contains("has no examples"), "{src}: {}", r.err);
        assert!(!r.out.contains("NaN"), "{}", r.out);
    }
}

//! `nabla run` end to end: training on the bundled digits prints the book's lines,
//! checkpoints resume, and bad data, bad checkpoints and a diverging loss are clear errors.

use std::path::PathBuf;
use std::process::Command;

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nabla-run-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Runs `nabla run` on `src` written to `dir/main.net`; (exit code, stdout, stderr).
fn run(dir: &PathBuf, src: &str, args: &[&str]) -> (i32, String, String) {
    let file = dir.join("main.net");
    std::fs::write(&file, src).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .arg("run")
        .arg(&file)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("NABLA_DATA")
        .output()
        .expect("run nabla");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const NET: &str = "import std.nn.*\nimport std.data.*\nnet Linear: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(10)\n}\n";

fn script(body: &str) -> String {
    format!("{NET}{body}")
}

#[test]
fn training_prints_epochs_and_accuracy_and_resumes_from_a_checkpoint() {
    let d = dir("resume");
    let body = |epochs: u32| {
        format!(
            "let data = mnist()\nlet cfg = TrainConfig {{ optimizer: sgd(lr: 0.1), batch: 128, epochs: {epochs}, checkpoint: \"ck.safetensors\" }}\nlet model = train(Linear, data, cfg)\nprint(\"acc {{accuracy(model, data.test):.4}}\")\n"
        )
    };
    let (code, out, err) = run(&d, &script(&body(2)), &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(
            "Linear: 7850 parameters · 7996 training examples · 63 steps of 128 per epoch"
        ),
        "{out}"
    );
    for line in ["Epoch 1/2: loss=", "Epoch 2/2: loss=", "val accuracy: "] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    // The book's form: `Epoch 1/2: loss=0.123456 lr=0.100000 (12ms)`.
    let epoch = out
        .lines()
        .find(|l| l.starts_with("Epoch 1/2"))
        .unwrap_or_default();
    let loss: f64 = epoch["Epoch 1/2: loss=".len()..]
        .split(' ')
        .next()
        .and_then(|x| x.parse().ok())
        .expect("loss");
    assert!(loss > 0.2 && loss < 2.3, "{epoch}");
    assert!(
        epoch.contains(" lr=0.100000 (") && epoch.ends_with("ms)"),
        "{epoch}"
    );
    let acc: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("acc "))
        .and_then(|x| x.parse().ok())
        .expect("accuracy");
    assert!(
        acc > 0.8,
        "two epochs of a linear classifier reach 80%: {acc}"
    );
    assert!(d.join("ck.safetensors").exists());
    // Resuming: epochs 1-2 are done; only epoch 3 runs, from the saved parameters.
    let (code, out, err) = run(&d, &script(&body(3)), &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("resumed from ck.safetensors after epoch 2"),
        "{out}"
    );
    assert!(
        !out.contains("Epoch 1/3") && out.contains("Epoch 3/3"),
        "{out}"
    );
    let acc2: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("acc "))
        .and_then(|x| x.parse().ok())
        .expect("accuracy");
    assert!(acc2 > 0.8, "{acc2}");
}

#[test]
fn save_and_load_round_trip_and_bad_checkpoints_are_errors() {
    let d = dir("ckpt");
    let save = "let model = init(Linear, 3)\nsave(model, \"m.safetensors\")\nlet back = load(Linear, \"m.safetensors\")\nprint(\"{accuracy(model, mnist().test) == accuracy(back, mnist().test)}\")\n";
    let (code, out, err) = run(&d, &script(save), &[]);
    assert_eq!((code, out.trim()), (0, "true"), "{err}");
    // A checkpoint of another net.
    let other = "import std.nn.*\nimport std.data.*\nnet Other: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(32)\n  dense(10)\n}\nlet m = load(Other, \"m.safetensors\")\n";
    let (code, _, err) = run(&d, other, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("m.safetensors is a checkpoint of net `Linear`, not `Other`")
            && err.contains("E0701"),
        "{err}"
    );
    // A truncated one: an error naming the file, and the file is not touched.
    let bytes = std::fs::read(d.join("m.safetensors")).expect("read");
    std::fs::write(d.join("cut.safetensors"), &bytes[..bytes.len() / 2]).expect("write");
    let (code, _, err) = run(
        &d,
        &script("let m = load(Linear, \"cut.safetensors\")\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cut.safetensors is not a valid safetensors file (truncated or corrupt)"),
        "{err}"
    );
    let (code, _, err) = run(
        &d,
        &script("let m = load(Linear, \"missing.safetensors\")\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read checkpoint missing.safetensors"),
        "{err}"
    );
    // Saving leaves no temporary files behind.
    let stray: Vec<String> = std::fs::read_dir(&d)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn a_diverging_loss_names_the_step() {
    let d = dir("nan");
    let net = "import std.nn.*\nimport std.data.*\nnet Deep: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(64, relu)\n  dense(10)\n}\n";
    let src = format!(
        "{net}let cfg = TrainConfig {{ optimizer: sgd(lr: 1e30), batch: 128, epochs: 1 }}\nlet m = train(Deep, mnist(), cfg)\nprint(\"unreachable\")\n"
    );
    let (code, out, err) = run(&d, &src, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("unreachable"));
    assert!(
        err.contains("the loss is")
            && err.contains("at optimizer step 2")
            && err.contains("lower learning rate"),
        "{err}"
    );
    // Replayed on the interpreter: the product that overflowed first, in std.nn's dense.
    assert!(
        err.contains("the first value that is not finite comes from `matmul` at <std.nn>:"),
        "{err}"
    );
    // The span points into std.train's loop, where the step ran.
    assert!(err.contains("train_step("), "{err}");
    // ... and the trace goes back to the user's call.
    assert!(
        err.contains("let m = train(Deep, mnist(), cfg)") && err.contains("called from here"),
        "{err}"
    );
}

/// A net with fewer outputs than the data has classes would silently drop the examples
/// whose labels it cannot take (their one-hot row is all zeros): an error instead, in
/// training and in evaluation.
#[test]
fn labels_beyond_the_nets_outputs_are_an_error() {
    let d = dir("labels");
    let net = "import std.nn.*\nimport std.data.*\nnet Three: f32[1, 28, 28] -> f32[3] {\n  flatten\n  dense(3)\n}\n";
    let train = format!(
        "{net}let cfg = TrainConfig {{ optimizer: sgd(lr: 0.1), batch: 128, epochs: 1 }}\nlet m = train(Three, mnist(), cfg)\nprint(\"unreachable\")\n"
    );
    let (code, out, err) = run(&d, &train, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("unreachable"));
    assert!(
        err.contains("MNIST train example")
            && err.contains("but net Three has 3 outputs (labels 0..2)")
            && err.contains("the data has 10 classes; give the net's last layer 10 outputs"),
        "{err}"
    );
    let eval = format!("{net}let m = init(Three, 1)\nprint(accuracy(m, mnist().test))\n");
    let (code, out, err) = run(&d, &eval, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("MNIST test example") && err.contains("3 outputs"),
        "{err}"
    );
}

#[test]
fn a_nan_names_the_first_op_that_made_it() {
    let d = dir("nan_op");
    let src = "import std.nn.*\nimport std.data.*\n\n/// NaN for negative values.\nlayer logs()(x: f32[B, n]) {\n  log(x)\n}\n\nnet Bad: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(10)\n  logs\n}\nlet cfg = TrainConfig { optimizer: sgd(lr: 0.1), batch: 128, epochs: 1 }\nlet m = train(Bad, mnist(), cfg)\n";
    let (code, _, err) = run(&d, src, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the loss is NaN at optimizer step 1"), "{err}");
    assert!(
        err.contains("the first value that is not finite comes from `log` at ")
            && err.contains("main.net:6:3 (`log(x)`)"),
        "{err}"
    );
    // Not a step too long: the net itself makes the NaN.
    assert!(!err.contains("lower learning rate"), "{err}");
}

#[test]
fn missing_and_corrupt_data_are_errors_naming_the_file() {
    let d = dir("data");
    let (code, _, err) = run(&d, &script("let f = fashion_mnist()\n"), &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Fashion-MNIST is not bundled: pass `--data DIR` or set $NABLA_DATA"),
        "{err}"
    );
    let fm = d.join("fashion-mnist");
    std::fs::create_dir_all(&fm).expect("dir");
    for f in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::write(
            fm.join(f),
            [0u8, 0, 8, 9, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0],
        )
        .expect("write");
    }
    let (code, _, err) = run(
        &d,
        &script("let f = fashion_mnist()\n"),
        &["--data", d.to_str().unwrap_or(".")],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("train-images-idx3-ubyte: wrong magic number 0x00000809"),
        "{err}"
    );
}

#[test]
fn a_full_recipe_trains() {
    // AdamW, warmup then cosine decay, label smoothing, random crops, normalization,
    // evaluation every 2 epochs (and at the end).
    let d = dir("recipe");
    let src = "import std.nn.*\nimport std.data.*\nnet Small: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(64, relu)\n  dense(10)\n}\n\
               let data = mnist()\nlet cfg = TrainConfig { optimizer: adamw(lr: 0.002), batch: 100, epochs: 3, warmup_epochs: 1, schedule: cosine(floor: 0.05),\n  \
               label_smoothing: 0.1, augment: [random_crop(pad: 2)], normalize_mean: [0.1307], normalize_std: [0.3081], seed: 4, eval_every: 2 }\n\
               let model = train(Small, data, cfg)\nprint(\"acc {accuracy(model, data.test):.4}\")\n";
    let (code, out, err) = run(&d, src, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        out.matches("val accuracy:").count(),
        2,
        "after epochs 2 and 3: {out}"
    );
    // Warmup ends at the base rate; cosine ends at the floor (0.05 · 0.002).
    assert!(
        out.contains("Epoch 1/3: ") && out.contains("lr=0.002000"),
        "{out}"
    );
    assert!(
        out.contains("Epoch 3/3: ") && out.contains("lr=0.000100"),
        "{out}"
    );
    let acc: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("acc "))
        .and_then(|x| x.parse().ok())
        .expect("accuracy");
    assert!(acc > 0.8, "{acc}");
    // A bad recipe is an error naming the field.
    let bad = src.replace("label_smoothing: 0.1", "label_smoothing: 1.5");
    let (code, _, err) = run(&d, &bad, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("TrainConfig.label_smoothing is 1.5, but it must be in [0, 1)"),
        "{err}"
    );
}

#[test]
fn an_extern_fn_without_an_implementation_is_refused_before_running() {
    let d = dir("extern");
    let (code, out, err) = run(
        &d,
        "print(\"first\")\nextern fn beep(n: int) -> int\nprint(beep(3))\n",
        &[],
    );
    assert_eq!(code, 1);
    assert!(out.is_empty(), "nothing runs: {out}");
    assert!(
        err.contains("[E0702] Error: `extern fn beep` has no native implementation")
            && err.contains("print(beep(3))"),
        "{err}"
    );
}

/// A small conv net with batchnorm: gradients through every kind of layer.
const CNN: &str = "import std.nn.*\nimport std.data.*\nnet Small: f32[1, 28, 28] -> f32[10] {\n  conv(4, 3, pad: 1)\n  batchnorm\n  relu\n  maxpool(4)\n  flatten\n  dense(10)\n}\n";

#[test]
fn gradients_from_scripts_agree_with_the_reference_interpreter() {
    let d = dir("grad");
    let body = "let data = mnist()\nlet model = init(Small, 3)\nlet before = params(model)\nlet r = value_and_grad(model, data.train, 5, 8)\nlet g = grad(model, data.train, 5, 8)\nprint(\"loss {r.loss:.9}\")\nprint(\"same {compare(g, r.grads).error}\")\nprint(\"unchanged {compare(params(model), before).error}\")\nprint(\"names {tensor_names(g)}\")\nsave_tensors(g, \"{dev}.safetensors\")\n";
    let mut losses = vec![];
    for dev in ["cpu", "ref"] {
        let (code, out, err) = run(
            &d,
            &format!("{CNN}{}", body.replace("{dev}", dev)),
            &["--device", dev],
        );
        assert_eq!(code, 0, "{out}\n{err}");
        // grad and value_and_grad are one computation; asking for them changes nothing
        // (batchnorm's running statistics included).
        assert!(
            out.contains("same 0.0\n") && out.contains("unchanged 0.0\n"),
            "{out}"
        );
        assert!(
            out.contains("names [0.weight, 1.weight, 1.bias, 5.weight, 5.bias]"),
            "{out}"
        );
        losses.push(
            out.lines()
                .find_map(|l| l.strip_prefix("loss "))
                .and_then(|x| x.parse::<f64>().ok())
                .expect("loss"),
        );
    }
    assert!(
        (losses[0] - losses[1]).abs() <= 1e-6 * losses[1].abs(),
        "{losses:?}"
    );
    // The compiled CPU step against the f64 interpreter, through files another tool could
    // have written: relative error (max|a-b| / max|b| per tensor) within 1e-5 in f32.
    let check = "let d = compare(load_tensors(\"cpu.safetensors\"), load_tensors(\"ref.safetensors\"))\nprint(\"error {d.error}\")\n";
    let (code, out, err) = run(&d, check, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let e: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("error "))
        .and_then(|x| x.parse().ok())
        .expect("error");
    assert!(e <= 1e-5, "cpu vs reference gradient: {e}");
    // Parameters set from a file move the loss to the other model's.
    let swap = "let data = mnist()\nlet a = init(Small, 3)\nlet b = init(Small, 4)\nsave_tensors(params(a), \"a.safetensors\")\nset_params(b, load_tensors(\"a.safetensors\"))\nprint(\"diff {value_and_grad(b, data.train, 5, 8).loss - value_and_grad(a, data.train, 5, 8).loss}\")\n";
    let (code, out, err) = run(&d, &format!("{CNN}{swap}"), &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("diff 0.0\n"), "{out}");
}

#[test]
fn bad_tensor_sets_and_batches_are_errors() {
    let d = dir("badgrad");
    let cases: &[(&str, &str)] = &[
        (
            "set_params(init(Small, 0), load_tensors(\"nothing.safetensors\"))",
            "cannot read nothing.safetensors",
        ),
        (
            "save_tensors(grad(init(Linear, 0), mnist().train, 0, 4), \"g.safetensors\")\nset_params(init(Small, 0), load_tensors(\"g.safetensors\"))",
            "`1.bias` has shape [10], but the net's is [4]",
        ),
        (
            "save_tensors(grad(init(Small, 0), mnist().train, 0, 4), \"g.safetensors\")\nset_params(init(Linear, 0), load_tensors(\"g.safetensors\"))",
            "net `Linear` has no parameter or state named `0.weight`",
        ),
        (
            "let m = init(Linear, 0)\nlet g = grad(m, mnist().train, 0, 4)\nprint(compare(g, grad(init(Small, 0), mnist().train, 0, 4)).error)",
            "is in the reference set but not in the other",
        ),
        (
            "grad(init(Linear, 0), mnist().train, 7996, 4)",
            "no examples in [7996, 8000)",
        ),
        ("grad(init(Linear, 0), mnist().train, 0, 0)", "size > 0"),
    ];
    for (body, want) in cases {
        let src = format!(
            "{}\nnet Small: f32[1, 28, 28] -> f32[10] {{\n  conv(4, 3, pad: 1)\n  batchnorm\n  relu\n  maxpool(4)\n  flatten\n  dense(10)\n}}\n{body}\n",
            NET
        );
        let (code, out, err) = run(&d, &src, &[]);
        assert_ne!(code, 0, "{body}\n{out}");
        assert!(err.contains(want), "{body}: want {want:?} in\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::write(
        d.join("short.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}",
    )
    .expect("write");
    let (code, _, err) = run(
        &d,
        "print(l2_norm(load_tensors(\"short.safetensors\")))",
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("short.safetensors"), "{err}");
}

/// Mixed precision: the linear classifier trained with its products in bf16 reaches the
/// f32 test accuracy within 0.5 points (same seed, same batches).
#[test]
fn bf16_products_train_to_the_f32_accuracy() {
    let mut acc = Vec::new();
    for precision in ["f32", "bf16"] {
        let d = dir(&format!("precision-{precision}"));
        let src = format!(
            "import std.nn.*\nimport std.data.*\nnet L: f32[1, 28, 28] -> f32[10] {{\n  flatten\n  dense(10)\n}}\nlet data = mnist()\nlet cfg = TrainConfig {{ optimizer: sgd(lr: 0.1), batch: 64, epochs: 3, eval_every: 0, precision: \"{precision}\" }}\nlet m = train(L, data, cfg)\nprint(\"test accuracy: {{100.0 * accuracy(m, data.test):.2}}\")\n"
        );
        let (code, out, err) = run(&d, &src, &[]);
        assert_eq!(code, 0, "{out}{err}");
        let a: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("test accuracy: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{out}"));
        eprintln!("{precision}: {a}%");
        acc.push(a);
    }
    assert!(acc[0] > 80.0, "{acc:?}");
    assert!(
        (acc[0] - acc[1]).abs() <= 0.5,
        "f32 {}% against bf16 {}%",
        acc[0],
        acc[1]
    );
}

/// Inference: `nabla predict` on digits written as PNG files gives exactly the classes
/// and probabilities that `predict(model, split)` gives for the same test examples from a
/// script (same checkpoint: a PNG holds the 8-bit pixels as they are, and 28×28 needs no
/// resizing), and most are right. Images that cannot be read are errors naming them.
#[test]
fn predict_from_the_command_line_matches_predict_in_a_script() {
    let d = dir("predict");
    let net = "import std.nn.*\nimport std.data.*\nnet L: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(10)\n}\n";
    let src = format!(
        "{net}let data = mnist()\nlet cfg = TrainConfig {{ optimizer: sgd(lr: 0.1), batch: 64, epochs: 2, eval_every: 0, normalize_mean: [0.13], normalize_std: [0.31] }}\nlet m = train(L, data, cfg)\nsave(m, \"l.safetensors\")\nlet back = load(L, \"l.safetensors\")\nlet ps = predict(back, data.test)\nfor i in 0..20 {{\n  print(\"p {{i}} {{ps[i].class}} {{ps[i].probability:.4}}\")\n}}\n"
    );
    let (code, out, err) = run(&d, &src, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let script: Vec<(usize, String)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("p "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[1].parse().expect("class"), f[2].to_string())
        })
        .collect();
    assert_eq!(script.len(), 20, "{out}");
    // The same 20 test digits as PNG files.
    let (_, test) = nabla_stdlib::runtime::data::bundled_mnist().expect("bundled");
    let mut files = Vec::new();
    for i in 0..20 {
        let path = d.join(format!("d{i}.png"));
        let file = std::fs::File::create(&path).expect("create");
        let mut e = png::Encoder::new(std::io::BufWriter::new(file), 28, 28);
        e.set_color(png::ColorType::Grayscale);
        e.set_depth(png::BitDepth::Eight);
        let mut w = e.write_header().expect("header");
        w.write_image_data(&test.images[i * 784..(i + 1) * 784])
            .expect("pixels");
        w.finish().expect("png");
        files.push(path.display().to_string());
    }
    std::fs::write(d.join("net.net"), net).expect("write");
    let mut args = vec![
        "predict",
        "net.net",
        "--params",
        "l.safetensors",
        "--top",
        "2",
    ];
    args.extend(files.iter().map(String::as_str));
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(&args)
        .current_dir(&d)
        .output()
        .expect("run nabla");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let mut right = 0;
    for (i, line) in stdout.lines().enumerate() {
        // `…/d3.png: 0 (0.9731), 6 (0.0112)`
        let (_, top) = line.split_once(": ").expect("a prediction");
        let (class, p) = top
            .split(", ")
            .next()
            .expect("top")
            .split_once(" (")
            .expect("class");
        let class: usize = class.parse().expect("class");
        assert_eq!(
            (class, p.trim_end_matches(')')),
            (script[i].0, script[i].1.as_str()),
            "image {i}: {line}"
        );
        right += usize::from(class == test.labels[i] as usize);
    }
    assert_eq!(stdout.lines().count(), 20, "{stdout}");
    assert!(right >= 16, "{right} of 20 right:\n{stdout}");
    // A file that is no image.
    std::fs::write(d.join("bad.png"), b"not a png").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(["predict", "net.net", "--params", "l.safetensors", "bad.png"])
        .current_dir(&d)
        .output()
        .expect("run nabla");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.png: not a readable PNG"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Rewrites safetensors file `from` into `to` with every tensor stored as `dtype`
/// (`F64`, `BF16` or `I32`), as other tools save them.
fn convert_safetensors(from: &std::path::Path, to: &std::path::Path, dtype: &str) {
    let bytes = std::fs::read(from).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("json");
    let data = &bytes[8 + n..];
    let mut out_header = serde_json::Map::new();
    let mut out_data = Vec::new();
    for (name, t) in header.as_object().expect("object") {
        if name == "__metadata__" {
            out_header.insert(name.clone(), t.clone());
            continue;
        }
        let off = t["data_offsets"].as_array().expect("offsets");
        let (a, b) = (
            off[0].as_u64().expect("a") as usize,
            off[1].as_u64().expect("b") as usize,
        );
        let start = out_data.len();
        for c in data[a..b].chunks_exact(4) {
            let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            match dtype {
                "F64" => out_data.extend(f64::from(v).to_le_bytes()),
                // Truncation, as a plain cast to bfloat16 would round: either is bf16.
                "BF16" => out_data.extend(((v.to_bits() >> 16) as u16).to_le_bytes()),
                _ => out_data.extend((v as i32).to_le_bytes()),
            }
        }
        let mut t = t.clone();
        t["dtype"] = dtype.into();
        t["data_offsets"] = serde_json::json!([start, out_data.len()]);
        out_header.insert(name.clone(), t);
    }
    let header = serde_json::to_vec(&serde_json::Value::Object(out_header)).expect("json");
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(out_data);
    std::fs::write(to, file).expect("write");
}

/// PyTorch keeps batchnorm's `num_batches_tracked` as an int64: a state dict whose step
/// counts are I64 (the rest f32, as `state_dict()` gives them) loads, the counts read as
/// they are, and training from it goes on counting, as PyTorch's would. A parameter in an
/// integer type is still an error.
#[test]
fn pytorch_int64_step_counts_load_and_count_on() {
    let d = dir("int64");
    let net = "import std.nn.*\nimport std.data.*\nnet B: f32[1, 28, 28] -> f32[10] {\n  conv(4, 3, pad: 1)\n  batchnorm\n  relu\n  maxpool(4)\n  flatten\n  dense(10)\n}\n";
    let (code, out, err) = run(
        &d,
        &format!("{net}save(init(B, 1), \"b.safetensors\")\n"),
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    // `1.num_batches_tracked` as I64 holding 7, as a PyTorch model 7 steps into training.
    let bytes = std::fs::read(d.join("b.safetensors")).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("json");
    let data = &bytes[8 + n..];
    let (mut out_header, mut out_data) = (serde_json::Map::new(), Vec::new());
    for (name, t) in header.as_object().expect("object") {
        let mut t = t.clone();
        if name != "__metadata__" {
            let off = t["data_offsets"].as_array().expect("offsets").clone();
            let (a, b) = (
                off[0].as_u64().expect("a") as usize,
                off[1].as_u64().expect("b") as usize,
            );
            let start = out_data.len();
            if name.ends_with("num_batches_tracked") {
                out_data.extend(7i64.to_le_bytes());
                t["dtype"] = "I64".into();
            } else {
                out_data.extend(&data[a..b]);
            }
            t["data_offsets"] = serde_json::json!([start, out_data.len()]);
        }
        out_header.insert(name.clone(), t);
    }
    let header = serde_json::to_vec(&serde_json::Value::Object(out_header)).expect("json");
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(out_data);
    std::fs::write(d.join("torch.safetensors"), file).expect("write");
    let src = format!(
        "{net}let data = mnist()\nlet m = load(B, \"torch.safetensors\")\nsave_tensors(params(m), \"loaded.safetensors\")\n\
         let cfg = TrainConfig {{ optimizer: sgd(lr: 0.01), batch: 1000, epochs: 1 }}\n\
         fit(m, data, cfg)\nsave_tensors(params(m), \"trained.safetensors\")\n"
    );
    let (code, out, err) = run(&d, &src, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let count = |file: &str| -> f32 {
        let bytes = std::fs::read(d.join(file)).expect("read");
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("json");
        let t = &header["1.num_batches_tracked"];
        assert_eq!(t["dtype"], "F32", "{t}");
        let a = t["data_offsets"][0].as_u64().expect("offset") as usize + 8 + n;
        f32::from_le_bytes(bytes[a..a + 4].try_into().expect("4 bytes"))
    };
    assert_eq!(count("loaded.safetensors"), 7.0);
    // 7,996 training digits in batches of 1,000: 8 steps (the last one partial).
    assert_eq!(count("trained.safetensors"), 15.0, "{out}");
}

/// A model saved in f64 or bf16 (as PyTorch users often save) loads, converted to f32:
/// f64 scores exactly what the f32 file scores, bf16 within half a point; a tensor of an
/// integer type is an error naming it, and the model is left as it was.
#[test]
fn checkpoints_in_f64_and_bf16_load() {
    let d = dir("dtypes");
    let net = "import std.nn.*\nimport std.data.*\nnet L: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(10)\n}\n";
    let src = format!(
        "{net}let data = mnist()\nlet m = train(L, data, TrainConfig {{ optimizer: sgd(lr: 0.1), batch: 64, epochs: 2, eval_every: 0 }})\nsave(m, \"l.safetensors\")\nprint(\"f32 {{100.0 * accuracy(m, data.test):.2}}\")\n"
    );
    let (code, out, err) = run(&d, &src, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let score = |out: &str, tag: &str| -> f64 {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{tag} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {tag} in {out}"))
    };
    let f32_acc = score(&out, "f32");
    for dtype in ["F64", "BF16", "I32"] {
        convert_safetensors(
            &d.join("l.safetensors"),
            &d.join(format!("{dtype}.safetensors")),
            dtype,
        );
    }
    let src = format!(
        "{net}let data = mnist()\nlet a = load(L, \"F64.safetensors\")\nprint(\"F64 {{100.0 * accuracy(a, data.test):.2}}\")\nlet b = load(L, \"BF16.safetensors\")\nprint(\"BF16 {{100.0 * accuracy(b, data.test):.2}}\")\nlet c = load(L, \"I32.safetensors\")\n"
    );
    let (code, out, err) = run(&d, &src, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(score(&out, "F64"), f32_acc, "{out}");
    assert!((score(&out, "BF16") - f32_acc).abs() <= 0.5, "{out}");
    assert!(
        err.contains("I32.safetensors: `1.")
            && err.contains("is I32; nabla reads F32, F64, F16 and BF16 tensors"),
        "{err}"
    );
    // A tensor the net does not have (another net's, or another naming) is an error
    // naming it, not ignored.
    let bytes = std::fs::read(d.join("l.safetensors")).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("json");
    let end = bytes.len() - 8 - n;
    header["fc.weight"] =
        serde_json::json!({"dtype": "F32", "shape": [1], "data_offsets": [end, end + 4]});
    let header = serde_json::to_vec(&header).expect("json");
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(&bytes[8 + n..]);
    file.extend(1f32.to_le_bytes());
    std::fs::write(d.join("extra.safetensors"), file).expect("write");
    let src = format!("{net}let a = load(L, \"extra.safetensors\")\n");
    let (code, out, err) = run(&d, &src, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("extra.safetensors has 1 tensor that net `L` does not: `fc.weight`"),
        "{err}"
    );
}

/// `save` writes the model alone (parameters and state: no optimizer slots, no
/// progress), `checkpoint` what resuming needs; both load, to the same accuracy.
#[test]
fn save_writes_the_model_and_checkpoint_what_training_needs() {
    let d = dir("save");
    let src = "import std.nn.*\nimport std.data.*\nnet L: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(10)\n}\nlet data = mnist()\nlet m = train(L, data, TrainConfig { optimizer: adam(lr: 0.001), batch: 64, epochs: 1, eval_every: 0, checkpoint: \"c.safetensors\" })\nsave(m, \"m.safetensors\")\nprint(\"a {100.0 * accuracy(m, data.test):.2}\")\nprint(\"b {100.0 * accuracy(load(L, \"m.safetensors\"), data.test):.2}\")\nprint(\"c {100.0 * accuracy(load(L, \"c.safetensors\"), data.test):.2}\")\n";
    let (code, out, err) = run(&d, src, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let acc: Vec<&str> = ["a ", "b ", "c "]
        .iter()
        .map(|t| {
            out.lines()
                .find_map(|l| l.strip_prefix(t))
                .expect("accuracy")
        })
        .collect();
    assert!(acc[0] == acc[1] && acc[1] == acc[2], "{out}");
    let header = |f: &str| -> serde_json::Value {
        let bytes = std::fs::read(d.join(f)).expect("file");
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        serde_json::from_slice(&bytes[8..8 + n]).expect("json")
    };
    let (m, c) = (header("m.safetensors"), header("c.safetensors"));
    let keys = |h: &serde_json::Value| -> Vec<String> {
        h.as_object()
            .expect("object")
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect()
    };
    assert_eq!(keys(&m), ["1.bias", "1.weight"], "{m}");
    assert_eq!(m["__metadata__"]["format"], "nabla-model-1");
    assert!(m["__metadata__"].get("epoch").is_none(), "{m}");
    assert!(keys(&c).iter().any(|k| k.starts_with("opt.m.")), "{c}");
    assert_eq!(c["__metadata__"]["format"], "nabla-checkpoint-1");
    assert_eq!(c["__metadata__"]["epoch"], "1");
}

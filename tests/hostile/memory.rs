//! Sizes too large for memory: parameters, batches, inputs and images of sizes from
//! terabytes to past 2^64 bytes, through `run` (both devices), `bench` and `gradcheck`.
//! Each is checked before anything is allocated and reported as an error naming what was
//! being allocated and how big; never an abort. (Every size here is far beyond any
//! machine's memory, so no test allocates much.)

use super::{Ran, nabla, on_file, scratch};

fn assert_refused(r: &Ran, what: &str) {
    r.assert_no_crash(what);
    assert_eq!(r.code, Some(1), "{what}: {}\n{}", r.out, r.err);
    // (gradcheck reports on stdout, beside its findings.)
    let said = format!("{}{}", r.out, r.err);
    assert!(
        said.contains("cannot allocate") || said.contains("[E0313]"),
        "{what}: {said}"
    );
    assert!(!said.contains("memory allocation of"), "{what}: {said}");
}

#[test]
fn parameters_too_large_are_refused_before_allocating() {
    let dir = scratch("memory-params");
    let layers = [
        "dense(100000000)",
        "dense(1000000000)",
        "dense(1099511627776)",
        "dense(4611686018427387904)",
        "linear(10000000000)",
    ];
    for (i, layer) in layers.iter().enumerate() {
        let src = format!(
            "import std.nn.*\nnet Big: f32[784] -> f32[10] {{\n  {layer}\n  dense(10)\n}}\nlet m = init(Big)\nprint(\"made\")\n"
        );
        for device in ["cpu", "ref"] {
            let r = on_file(
                &dir,
                &format!("p{i}.net"),
                &src,
                &["run", "--device", device],
            );
            assert_refused(&r, &format!("{layer} on {device}"));
            assert!(!r.out.contains("made"));
        }
    }
    // A convolution whose weights alone are terabytes, in gradcheck too.
    let src = "import std.nn.*\nnet C: f32[3, 8, 8] -> f32[10] {\n  conv(1000000, 3, pad: 1)\n  conv(1000000, 3, pad: 1)\n  global_avg_pool\n  dense(10)\n}\n";
    let r = on_file(&dir, "c.net", src, &["gradcheck"]);
    assert_refused(&r, "gradcheck of a huge conv");
}

#[test]
fn batches_and_inputs_too_large_are_refused() {
    let dir = scratch("memory-batch");
    let root = env!("CARGO_MANIFEST_DIR");
    for (net, args) in [
        ("mnist_mlp", vec!["--batch", "1000000000"]),
        ("mnist_cnn", vec!["--batch", "100000000"]),
        (
            "resnet34",
            vec!["--batch", "1", "--input", "3,100000,100000"],
        ),
        ("vit_tiny", vec!["--batch", "10000000"]),
    ] {
        let file = format!("{root}/examples/{net}.net");
        let mut all = vec!["bench", file.as_str(), "--steps", "1"];
        all.extend(args.iter());
        let o = nabla(&dir, &all).output().expect("bench");
        let r = Ran {
            code: o.status.code(),
            out: String::from_utf8_lossy(&o.stdout).into(),
            err: String::from_utf8_lossy(&o.stderr).into(),
        };
        assert_refused(&r, &format!("bench {net} {args:?}"));
    }
}

#[test]
fn image_sizes_too_large_are_refused() {
    let dir = scratch("memory-images");
    std::fs::create_dir_all(dir.join("imgs/train/a")).expect("dir");
    std::fs::create_dir_all(dir.join("imgs/val/a")).expect("dir");
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, 2, 2);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().expect("header");
        w.write_image_data(&[9; 12]).expect("data");
    }
    std::fs::write(dir.join("imgs/train/a/x.png"), &bytes).expect("png");
    std::fs::write(dir.join("imgs/val/a/y.png"), &bytes).expect("png");
    for size in ["10000000", "1000000000", "10000000000", "0", "-5"] {
        let src = format!(
            "import std.data.*\nlet d = image_folder(\"imgs\", size: {size})\nprint(\"loaded\")\n"
        );
        let r = on_file(&dir, "i.net", &src, &["run"]);
        r.assert_no_crash(size);
        assert_eq!(r.code, Some(1), "size {size}: {}\n{}", r.out, r.err);
        assert!(
            r.err.contains("cannot allocate") || r.err.contains("at least 1"),
            "size {size}: {}",
            r.err
        );
    }
    // A sensible size still loads.
    let r = on_file(
        &dir,
        "ok.net",
        "import std.data.*\nlet d = image_folder(\"imgs\", size: 8)\nprint(\"loaded {split_size(d.train)}\")\n",
        &["run"],
    );
    assert_eq!(r.out.trim(), "loaded 1", "{}", r.err);
}

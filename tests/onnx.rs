//! `nabla export` against an ONNX runtime that is not nabla: each of the nine example
//! nets is trained for a few steps (so that weights, biases and batchnorm statistics are
//! all informative), exported, and run by `tract-onnx` (pure Rust, no Python) on the
//! same batch as nabla's own eval-mode `logits`; the two must agree to 1e-4 (worst
//! `|a − b| / max|b|`). The large nets are declared for 3×32×32 images (their strides
//! divide 32; the net bodies are the examples'); ViT, whose position embedding is sized
//! by its input, stays at 224.
//! Bad input to `export` is an error naming what is wrong.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use tract_onnx::prelude::*;

const BOUND: f64 = 1e-4;
const N: usize = 4;

fn nabla(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run nabla");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nabla-onnx-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// The example's items, without its training script (from its first top-level `let`).
fn items(net: &str) -> String {
    let path = format!("{}/examples/{net}.net", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).expect("example");
    match text.find("\nlet ") {
        Some(i) => text[..=i].to_string(),
        None => text,
    }
}

/// A deterministic byte stream (xorshift), for test images.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// An image folder of RGB PNGs, one per class in `train/` and `val/`, `size`×`size`; the
/// `val` images in the folder's order (by class) as NCHW floats in [0, 1].
fn image_folder(dir: &Path, size: usize) -> Vec<f32> {
    let mut val = Vec::new();
    for (split, salt) in [("train", 1), ("val", 2)] {
        for class in 0..10 {
            let d = dir.join("folder").join(split).join(format!("c{class}"));
            std::fs::create_dir_all(&d).expect("class dir");
            let px = bytes(salt * 100 + class as u64, size * size * 3);
            let f = std::fs::File::create(d.join("img.png")).expect("png");
            let mut enc = png::Encoder::new(f, size as u32, size as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header()
                .and_then(|mut w| w.write_image_data(&px))
                .expect("write png");
            if split == "val" && class < N {
                // HWC bytes to CHW floats.
                for c in 0..3 {
                    for i in 0..size * size {
                        val.push(f32::from(px[i * 3 + c]) / 255.0);
                    }
                }
            }
        }
    }
    val
}

/// The first `N` bundled MNIST test digits, as nabla's `mnist()` reads them.
fn mnist_test() -> Vec<f32> {
    let path = format!(
        "{}/data/mnist-10k/t10k-images-idx3-ubyte.gz",
        env!("CARGO_MANIFEST_DIR")
    );
    let gz = std::fs::read(path).expect("bundled MNIST");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .expect("gunzip");
    raw[16..16 + N * 784]
        .iter()
        .map(|b| f32::from(*b) / 255.0)
        .collect()
}

fn f32s(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("safetensors");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    bytes[8 + n..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Trains `net` a few steps at the given input, exports it, and returns (nabla's logits,
/// tract's logits).
fn both(net: &str, name: &str, size: usize) -> (Vec<f32>, Vec<f32>) {
    let d = scratch(net);
    let (data, x, shape) = if size == 28 {
        ("mnist()".to_string(), mnist_test(), [N, 1, 28, 28])
    } else {
        let x = image_folder(&d, size);
        (
            format!("image_folder(\"folder\", size: {size})"),
            x,
            [N, 3, size, size],
        )
    };
    // The large nets at a smaller image: the same net body, declared for it (their strides
    // divide 32).
    let source = items(net).replace("f32[3, 224, 224]", &format!("f32[3, {size}, {size}]"));
    let script = format!(
        "{source}\nlet data = {data}\n\
         let cfg = TrainConfig {{ optimizer: momentum(lr: 0.01, momentum: 0.9), batch: 5, epochs: 1 }}\n\
         let model = train({name}, data, cfg)\n\
         save(model, \"w.safetensors\")\n\
         save_tensors(logits(model, data.test, 0, {N}), \"logits.safetensors\")\n"
    );
    std::fs::write(d.join("m.net"), script).expect("script");
    let (code, out, err) = nabla(&d, &["run", "m.net"]);
    assert_eq!(code, 0, "{net}: {out}{err}");
    let (code, out, err) = nabla(
        &d,
        &[
            "export",
            "m.net",
            name,
            "--params",
            "w.safetensors",
            "-o",
            "m.onnx",
        ],
    );
    assert_eq!(code, 0, "{net}: {out}{err}");
    assert!(out.contains("opset 17"), "{out}");
    let ours = f32s(&d.join("logits.safetensors"));
    let model = tract_onnx::onnx()
        .model_for_path(d.join("m.onnx"))
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap_or_else(|e| panic!("{net}: tract cannot load the export: {e:?}"));
    let input = Tensor::from_shape(&shape, &x).expect("input tensor");
    let out = model
        .run(tvec!(input.into()))
        .unwrap_or_else(|e| panic!("{net}: tract cannot run the export: {e:?}"));
    let theirs: Vec<f32> = out[0]
        .to_plain_array_view::<f32>()
        .expect("f32 logits")
        .iter()
        .copied()
        .collect();
    let _ = std::fs::remove_dir_all(&d);
    (ours, theirs)
}

fn worst(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().map(|x| f64::from(x.abs())).fold(0.0, f64::max);
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max);
    assert!(scale > 0.0, "all-zero logits");
    diff / scale
}

#[test]
fn every_example_exports_and_tract_agrees_with_nabla() {
    let nets = [
        ("mnist_linear", "MnistLinear", 28),
        ("mnist_mlp", "MnistMlp", 28),
        ("mnist_cnn", "MnistCnn", 28),
        ("cifar_bn", "CifarBn", 32),
        ("resnet34", "ResNet34", 32),
        ("mobilenet_v2", "MobileNetV2", 32),
        ("efficientnet_b0", "EfficientNetB0", 32),
        ("convnext_tiny", "ConvNeXtTiny", 32),
        ("vit_tiny", "VitTiny", 224),
    ];
    let mut report = String::new();
    for (net, name, size) in nets {
        let (ours, theirs) = both(net, name, size);
        assert_eq!(ours.len(), N * 10, "{net}");
        let e = worst(&theirs, &ours);
        eprintln!("{net:16} tract vs nabla: {e:.2e}");
        if !(e <= BOUND) {
            report.push_str(&format!("{net}: tract's logits are {e:.2e} off nabla's\n"));
        }
    }
    assert!(report.is_empty(), "\n{report}");
}

#[test]
fn bad_exports_are_errors_naming_the_problem() {
    let d = scratch("bad");
    let net = "import std.nn.*\nnet Small: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(10)\n}\n\
               net Other: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(4)\n  dense(10)\n}\n\
               net Pos: f32[3, 8, 8] -> f32[10] {\n  patch_embed(6, 8)\n  position_embedding\n  take_class_token\n  dense(10)\n}\n\
               save(init(Small, 0), \"small.safetensors\")\n\
               save(init(Pos, 0), \"pos.safetensors\")\n";
    std::fs::write(d.join("n.net"), net).expect("script");
    let (code, out, err) = nabla(&d, &["run", "n.net"]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(d.join("junk.safetensors"), b"not a safetensors file").expect("junk");
    let cases: &[(&[&str], &str)] = &[
        // A checkpoint of another net: the first tensor it lacks, named.
        (
            &["Other", "--params", "small.safetensors"],
            "is a checkpoint of net `Small`, not `Other`",
        ),
        (
            &["Small", "--params", "missing.safetensors"],
            "missing.safetensors",
        ),
        (
            &["Small", "--params", "junk.safetensors"],
            "junk.safetensors is not a valid safetensors file",
        ),
        (&["Nope", "--params", "small.safetensors"], "Nope"),
        // A parameter sized by the input cannot follow another input size.
        (
            &["Pos", "--params", "pos.safetensors", "--input", "3,16,16"],
            "`1.pos_embedding` is [1, 4, 6] at this input size, but [1, 1, 6] in the checkpoint",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["export", "n.net"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "out.onnx"]);
        let (code, out, err) = nabla(&d, &all);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!d.join("out.onnx").exists(), "{args:?} wrote a file");
    }
    let _ = std::fs::remove_dir_all(&d);
}

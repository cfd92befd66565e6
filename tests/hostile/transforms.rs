//! Datasets that do not fit a net: a gray dataset for an RGB net is an error naming both
//! shapes and the transforms that fix it; with them it trains. A net trained at another
//! size than it declares (a ViT-like net whose position embedding follows the number of
//! patches) saves and loads at that size.

use super::{on_file, scratch};

const HEAD: &str = "import std.nn.*\nimport std.data.*\nimport std.train.*\n";

const CONV: &str = "net C: f32[3, 16, 16] -> f32[10] {\n  conv1: conv(8, 3, pad: 1)\n  relu\n  global_avg_pool\n  fc: dense(10)\n}\n";

#[test]
fn a_gray_dataset_for_an_rgb_net_names_the_transforms_that_fit() {
    let dir = scratch("transforms-gray");
    let src = format!(
        "{HEAD}{CONV}let m = train(C, mnist(), TrainConfig {{ batch: 64 }})\nprint(\"trained\")\n"
    );
    let r = on_file(&dir, "gray.net", &src, &["run"]);
    r.assert_no_crash("gray data for an RGB net");
    assert_eq!(r.code, Some(1), "{}\n{}", r.out, r.err);
    assert!(
        r.err
            .contains("MNIST train has examples of 1×28×28, but net `C` takes 3×16×16")
            && r.err.contains("transform(data, [to_rgb(), resize(16)])"),
        "{}",
        r.err
    );
    assert!(!r.out.contains("trained"), "{}", r.out);
    // With the transforms it names, it trains (ImageNet's normalization, three channels).
    let src = format!(
        "{HEAD}{CONV}let d = transform(mnist(), [to_rgb(), resize(16)])\nlet m = train(C, d, TrainConfig {{ batch: 64, optimizer: sgd(lr: 0.1), normalize_mean: imagenet_mean(), normalize_std: imagenet_std() }})\nprint(\"accuracy {{accuracy(m, d.test):.2%}}\")\n"
    );
    let r = on_file(&dir, "rgb.net", &src, &["run"]);
    assert_eq!(r.code, Some(0), "{}\n{}", r.out, r.err);
    assert!(r.out.contains("accuracy "), "{}", r.out);
}

#[test]
fn a_net_trained_at_another_size_saves_and_loads_at_it() {
    let dir = scratch("transforms-size");
    // Declared for 32×32 (16 patches of 8×8); trained at 16×16 (4 patches): the position
    // embedding is [1, 5, 16] in the model and in its file.
    let net = "net V: f32[3, 32, 32] -> f32[10] {\n  conv_proj: patch_embed(16, 8)\n  self: class_token\n  encoder: position_embedding\n  take_class_token\n  head: dense(10)\n}\n";
    let src = format!(
        "{HEAD}{net}let d = transform(mnist(), [to_rgb(), resize(16)])\nlet m = train(V, d, TrainConfig {{ batch: 64, optimizer: adam(lr: 0.01) }})\nsave(m, \"v.safetensors\")\nlet back = load(V, \"v.safetensors\")\nprint(\"{{accuracy(m, d.test):.4}} {{accuracy(back, d.test):.4}}\")\n"
    );
    let r = on_file(&dir, "vit.net", &src, &["run"]);
    assert_eq!(r.code, Some(0), "{}\n{}", r.out, r.err);
    let last: Vec<&str> = r.out.lines().last().unwrap_or("").split(' ').collect();
    assert!(
        last.len() == 2 && last[0] == last[1],
        "the loaded model differs: {}",
        r.out
    );
    let bytes = std::fs::read(dir.join("v.safetensors")).expect("saved");
    let text = String::from_utf8_lossy(&bytes[..2000.min(bytes.len())]).into_owned();
    assert!(
        text.contains("\"input\":\"3,16,16\"") && text.contains("[1,5,16]"),
        "{text}"
    );
}

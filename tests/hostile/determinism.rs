//! The same seed gives the same bits: the same training script, run under every thread
//! setting (the tuner's choice, `NABLA_SPIN=0` and `always`, one and two rayon threads),
//! prints the same losses to the last bit and writes byte-identical model and checkpoint
//! files. A small step (the tuned path, where products may be split over the team) and a
//! large one (the pooled path: convolutions, their weight gradients, batchnorm's sums over
//! the batch) are both trained, with augmentation and dropout drawing random numbers.

use super::{nabla, scratch};

const SCRIPT: &str = "import std.nn.*\nimport std.data.*\n\
net Small: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(16, relu)\n  drop(0.2)\n  dense(10)\n}\n\
net Large: f32[1, 28, 28] -> f32[10] {\n  conv(32, 3, pad: 1); batchnorm; relu\n  conv(32, 3, pad: 1); relu\n  maxpool(2)\n  conv(16, 3); batchnorm; relu\n  global_avg_pool\n  dense(10)\n}\n\
let data = mnist()\n\
let cfg = TrainConfig { optimizer: nesterov(lr: 0.05, weight_decay: 0.0001), batch: 128, augment: [random_crop(pad: 2), hflip()], label_smoothing: 0.1, seed: 3 }\n\
fn steps(m: Model, cfg: TrainConfig, data: Dataset, n: int, seed: int) {\n  prepare(m, cfg)\n  let order = shuffle(split_size(data.train), seed)\n  for s in 0..n {\n    let loss = train_batch(m, data.train, order, s * cfg.batch, 0.05, cfg.batch)\n    print(\"{loss:e}\")\n  }\n}\n\
let small = init(Small, 5)\nsteps(small, cfg, data, 12, 11)\nsave(small, \"small.safetensors\")\ncheckpoint(small, \"small-ck.safetensors\", 1)\n\
let large = init(Large, 6)\nsteps(large, TrainConfig { optimizer: adamw(lr: 0.001), batch: 64, seed: 4 }, data, 3, 12)\nsave(large, \"large.safetensors\")\n";

#[test]
fn the_same_seed_gives_the_same_bits_under_every_thread_setting() {
    let settings: [(&str, &[(&str, &str)]); 5] = [
        ("default", &[]),
        ("NABLA_SPIN=0", &[("NABLA_SPIN", "0")]),
        ("NABLA_SPIN=always", &[("NABLA_SPIN", "always")]),
        ("RAYON_NUM_THREADS=1", &[("RAYON_NUM_THREADS", "1")]),
        ("RAYON_NUM_THREADS=2", &[("RAYON_NUM_THREADS", "2")]),
    ];
    let mut first: Option<(String, Vec<Vec<u8>>)> = None;
    for (label, env) in settings {
        let dir = scratch(&format!("determinism-{}", label.replace('=', "-")));
        std::fs::write(dir.join("d.net"), SCRIPT).expect("write");
        let mut cmd = nabla(&dir, &["run", "d.net"]);
        cmd.env_remove("NABLA_SPIN").env_remove("RAYON_NUM_THREADS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = cmd.output().expect("run");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(out.lines().count(), 15, "{label}: {out}");
        let files: Vec<Vec<u8>> = [
            "small.safetensors",
            "small-ck.safetensors",
            "large.safetensors",
        ]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).expect("file"))
        .collect();
        match &first {
            None => first = Some((out, files)),
            Some((out0, files0)) => {
                assert_eq!(
                    &out, out0,
                    "{label}: the losses differ from the default run's"
                );
                for (i, (a, b)) in files.iter().zip(files0).enumerate() {
                    assert!(a == b, "{label}: file {i} differs from the default run's");
                }
            }
        }
    }
}

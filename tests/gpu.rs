//! The GPU backend from the command line: training the linear example on wgpu reaches the
//! CPU's test accuracy with the same seed; `nabla devices` lists what was found; a
//! backend this build lacks is an error saying how to get it. Without a Vulkan adapter
//! the wgpu tests say so and pass, unless `NABLA_REQUIRE_GPU` is set (CI installs
//! lavapipe and sets it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nabla-gpu-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn nabla(dir: &Path, args: &[&str]) -> (i32, String, String) {
    nabla_with(dir, args, &[])
}

fn nabla_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .envs(env.iter().copied())
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

/// Whether a wgpu adapter exists (else the test returns, unless one is required).
fn have_adapter() -> bool {
    if !nabla_gpu::adapters().is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("NABLA_REQUIRE_GPU").is_none(),
        "NABLA_REQUIRE_GPU is set, but wgpu finds no adapter"
    );
    eprintln!("skipped: no wgpu adapter");
    false
}

fn accuracy(out: &str) -> f64 {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("test accuracy: "))
        .unwrap_or_else(|| panic!("no accuracy in {out}"));
    line.trim_end_matches('%').parse().expect("a percentage")
}

#[test]
fn the_linear_example_trains_on_wgpu_to_the_cpus_accuracy() {
    if !have_adapter() {
        return;
    }
    let example = format!("{}/examples/mnist_linear.net", env!("CARGO_MANIFEST_DIR"));
    let mut acc = Vec::new();
    for device in ["cpu", "wgpu"] {
        let d = dir(device);
        let (code, out, err) = nabla(&d, &["run", &example, "--device", device]);
        assert_eq!(code, 0, "{device}: {out}{err}");
        assert_eq!(out.matches("val accuracy:").count(), 12, "{out}");
        acc.push(accuracy(&out));
        eprintln!("{device}: test accuracy {}%", acc[acc.len() - 1]);
    }
    assert!(
        (acc[0] - acc[1]).abs() <= 0.3,
        "cpu {}% against wgpu {}%",
        acc[0],
        acc[1]
    );
    // The checkpoints are the same kind of file (the safetensors headers — names, dtypes,
    // shapes, offsets — are byte for byte equal), and the one wgpu wrote loads on the CPU
    // and scores what it scored on wgpu (to one test example in 2,004: logits computed
    // in another order may flip a near tie).
    let header = |device: &str| {
        let bytes =
            std::fs::read(dir(device).join("mnist_linear.safetensors")).expect("checkpoint");
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        bytes[..8 + n].to_vec()
    };
    assert_eq!(header("cpu"), header("wgpu"));
    let src = std::fs::read_to_string(&example).expect("example");
    let net_end = src.find("let data").expect("the net comes first");
    let script = format!(
        "{}let m = load(MnistLinear, \"mnist_linear.safetensors\")\nprint(\"test accuracy: {{accuracy(m, mnist().test):.2%}}\")\n",
        &src[..net_end]
    );
    let d = dir("wgpu");
    std::fs::write(d.join("load.net"), script).expect("write");
    let (code, out, err) = nabla(&d, &["run", "load.net", "--device", "cpu"]);
    assert_eq!(code, 0, "{out}{err}");
    let reloaded = accuracy(&out);
    assert!(
        (reloaded - acc[1]).abs() <= 0.05,
        "wgpu's checkpoint scores {reloaded}% on the CPU, {}% on wgpu",
        acc[1]
    );
}

#[test]
fn devices_lists_adapters_and_backends() {
    let (code, out, _) = nabla(&dir("devices"), &["devices"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("cpu: "), "{out}");
    assert!(out.contains("wgpu: "), "{out}");
    assert!(out.contains("ref: "), "{out}");
    if !nabla_gpu::adapters().is_empty() {
        assert!(out.contains("(used by --device wgpu)"), "{out}");
    }
}

#[test]
fn a_backend_not_in_this_build_says_how_to_get_it() {
    let example = format!("{}/examples/mnist_linear.net", env!("CARGO_MANIFEST_DIR"));
    for (device, feature) in [("cuda", "cuda"), ("hip", "hip")] {
        if nabla_gpu::device::built()
            .iter()
            .any(|(n, built, _)| *n == device && *built)
        {
            continue;
        }
        let (code, out, err) = nabla(&dir(device), &["run", &example, "--device", device]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            err.contains(&format!("error: this build of nabla has no {device} backend: build with `--features {feature}`")),
            "{err}"
        );
        assert!(!out.contains("Epoch"), "nothing ran: {out}");
    }
}

/// CUDA is in the default build: on a machine without the driver, `--device cuda` is an
/// error naming what is missing (and nothing runs); with one, it trains like the CPU.
#[test]
fn cuda_without_a_driver_is_an_error_saying_what_is_missing() {
    if !nabla_gpu::device::built()
        .iter()
        .any(|(n, built, _)| *n == "cuda" && *built)
    {
        return;
    }
    let example = format!("{}/examples/mnist_linear.net", env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = nabla(&dir("cuda"), &["run", &example, "--device", "cuda"]);
    if code == 0 {
        eprintln!("CUDA present: test accuracy {}%", accuracy(&out));
        return;
    }
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with("error: could not open CUDA device 0 (")
            && err.contains("the NVIDIA driver (libcuda), NVRTC and the CUDA headers"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "no panic is printed: {err}");
    assert!(!out.contains("Epoch"), "nothing ran: {out}");
}

/// With no Vulkan driver to load, `--device wgpu` is an error saying what was probed and
/// what to install, and nothing runs.
#[cfg(target_os = "linux")]
#[test]
fn no_adapter_is_an_error_saying_what_to_install() {
    let example = format!("{}/examples/mnist_linear.net", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(["run", &example, "--device", "wgpu"])
        .current_dir(dir("no-adapter"))
        .env("NO_COLOR", "1")
        // The Vulkan loader reads its drivers' manifests from these (older and newer
        // names): a file that does not exist leaves it none.
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .output()
        .expect("run nabla");
    let (out, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        err.contains("error: no GPU adapter found for wgpu (probed: Vulkan through the system's loader; none answered)")
            && err.contains("apt-get install mesa-vulkan-drivers libvulkan1"),
        "{err}"
    );
    assert!(!out.contains("Epoch"), "nothing ran: {out}");
}

/// `nabla bench --device wgpu` times queued steps and reports device memory; `nabla
/// gradcheck --device wgpu` compares a net's gradients with the f64 interpreter.
#[test]
fn bench_and_gradcheck_run_on_wgpu() {
    if !have_adapter() {
        return;
    }
    let example = format!("{}/examples/mnist_linear.net", env!("CARGO_MANIFEST_DIR"));
    let d = dir("bench");
    let (code, out, err) = nabla(
        &d,
        &[
            "bench", &example, "--device", "wgpu", "--steps", "3", "--batch", "16",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("· wgpu on "), "{out}");
    assert!(
        out.contains("steps: 3 in ") && out.contains("steps/s"),
        "{out}"
    );
    assert!(
        out.contains("device memory: parameters, state and batch"),
        "{out}"
    );
    let (code, out, err) = nabla(&d, &["gradcheck", &example, "--device", "wgpu"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("net  MnistLinear (batch 2) on wgpu on ")
            && out.contains("4 outputs, worst "),
        "{out}"
    );
}

/// On wgpu the steps of an epoch are queued and their losses read when reported: a loss
/// that stops being finite at step 2 is found by `mean_loss` at the end of the epoch
/// (not by `train_step`, which never waits), is named by its own step, and is explained
/// by the same replay on the interpreter as on the CPU. Nothing is written.
#[test]
fn a_diverging_loss_on_wgpu_is_found_when_read_and_named_by_its_step() {
    if !have_adapter() {
        return;
    }
    let d = dir("nan");
    let src = "import std.nn.*\nimport std.data.*\nnet Deep: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(64, relu)\n  dense(10)\n}\nlet cfg = TrainConfig { optimizer: sgd(lr: 1e30), batch: 128, epochs: 1, checkpoint: \"deep.safetensors\" }\nlet m = train(Deep, mnist(), cfg)\nprint(\"unreachable\")\n";
    std::fs::write(d.join("m.net"), src).expect("write");
    let (code, out, err) = nabla(&d, &["run", "m.net", "--device", "wgpu"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("unreachable"), "{out}");
    assert!(
        err.contains("the loss is NaN at optimizer step 2 (epoch 1, learning rate 1e30)")
            && err.contains("the first value that is not finite comes from `matmul` at <std.nn>:")
            && err.contains("lower learning rate"),
        "{err}"
    );
    assert!(err.contains("let loss = mean_loss(model)"), "{err}");
    assert!(!d.join("deep.safetensors").exists());
}

/// Out of device memory (here under a limit, `NABLA_GPU_MEMORY`, since wgpu cannot say
/// how much is free): the error names the step and what it needed; the checkpoint of the
/// last finished epoch is intact, and a run without the limit resumes from it.
#[test]
fn out_of_device_memory_names_the_step_and_keeps_the_checkpoint() {
    if !have_adapter() {
        return;
    }
    let d = dir("oom");
    let src = "import std.nn.*\nimport std.data.*\nnet Lin: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(10)\n}\nlet cfg = TrainConfig { optimizer: sgd(lr: 0.1), batch: 64, epochs: 2, checkpoint: \"lin.safetensors\" }\nlet m = train(Lin, mnist(), cfg)\nprint(\"test accuracy: {accuracy(m, mnist().test):.2%}\")\n";
    std::fs::write(d.join("lin.net"), src).expect("write");
    // 1 MiB holds the parameters and a training batch of 64 images (196 KiB), not the
    // evaluation's batch of 500 (1.5 MiB).
    let (code, out, err) = nabla_with(
        &d,
        &["run", "lin.net", "--device", "wgpu"],
        &[("NABLA_GPU_MEMORY", "1M")],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("Epoch 1/2: loss="), "{out}");
    assert!(
        err.contains("evaluating examples 0..500 of MNIST test: the batch's images: out of device memory on wgpu on ")
            && err.contains("a tensor of shape [500, 1, 28, 28] needs 1.5 MiB")
            && err.contains("of the 1.0 MiB that NABLA_GPU_MEMORY allows is free"),
        "{err}"
    );
    let (code, out, err) = nabla(&d, &["run", "lin.net", "--device", "wgpu"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("resumed from lin.safetensors after epoch 1") && !out.contains("Epoch 1/2"),
        "{out}"
    );
    assert!(accuracy(&out) > 80.0, "{out}");
    let (code, out, err) = nabla_with(
        &d,
        &["run", "lin.net", "--device", "wgpu"],
        &[("NABLA_GPU_MEMORY", "plenty")],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("NABLA_GPU_MEMORY=plenty is not a size"),
        "{err}"
    );
}

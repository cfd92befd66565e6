//! Interrupted checkpoint writes: a program that writes a large checkpoint over and over is
//! killed at many different moments, by SIGKILL and by Ctrl-C. The checkpoint is always
//! whole (it loads, with the tensors that were written), and no temporary file is left
//! behind, neither right after the kill nor after the next write.

use std::time::Duration;

use super::rng::Rng;
use super::{nabla, scratch};

/// A 4096×4096 layer: a 64 MiB checkpoint, so a kill often lands inside a write.
const SCRIPT: &str = "import std.nn.*\nnet Big: f32[4096] -> f32[4096] {\n  dense(4096)\n}\nlet m = init(Big, 3)\nlet t = params(m)\nprint(\"ready\")\nfor i in 0..200 {\n  save_tensors(t, \"ck.safetensors\")\n}\n";

fn debris(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

#[test]
fn killed_writes_leave_a_whole_checkpoint_and_no_debris() {
    let dir = scratch("files");
    std::fs::write(dir.join("w.net"), SCRIPT).expect("write");
    let mut rng = Rng(0xdead);
    let mut left_right_after = 0;
    let kills = 16;
    for round in 0..kills {
        let mut child = nabla(&dir, &["run", "w.net"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start");
        // Wait until it is writing, then kill it at a random moment of the next writes.
        let mut out = child.stdout.take().expect("stdout");
        let mut first = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut first).expect("ready");
        std::thread::sleep(Duration::from_millis(rng.range(0, 400) as u64));
        if round % 2 == 0 {
            child.kill().expect("kill -9");
        } else {
            // Ctrl-C: the program stops at its next loop iteration, after a whole write.
            super::interrupt(child.id());
        }
        let status = child.wait().expect("wait");
        if round % 2 == 1 {
            assert_eq!(status.code(), Some(130), "round {round}: Ctrl-C exits 130");
        }
        let d = debris(&dir);
        left_right_after += d.len();
        // Whatever state the kill left: the checkpoint, if any, is whole.
        let ck = dir.join("ck.safetensors");
        if ck.exists() {
            let t = nabla_stdlib::runtime::tensors::Tensors::load(&ck)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(t.items.len(), 2, "round {round}");
            assert_eq!(t.items[1].shape, vec![4096, 4096]);
        }
    }
    // Unnamed temporary files leave nothing even when the kill lands inside a write (a
    // name exists only between linking and renaming, microseconds).
    assert!(
        left_right_after <= 1,
        "{left_right_after} temporary files left by {kills} kills"
    );
    // And a later write of the same target removes any that a dead process left.
    std::fs::write(dir.join(".ck.safetensors.tmp4194305"), b"old debris").expect("write");
    let one = SCRIPT.replace("0..200", "0..1");
    std::fs::write(dir.join("one.net"), one).expect("write");
    let r = nabla(&dir, &["run", "one.net"]).output().expect("run");
    assert!(r.status.success());
    assert_eq!(debris(&dir), Vec::<String>::new());
}

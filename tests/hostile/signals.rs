//! Closed pipes and Ctrl-C. Every command that prints, cut off by a reader that stops
//! early (`nabla ir big.net | head -1`), ends quietly: no panic, no error message. Ctrl-C
//! in the REPL stops the running input (a loop, a recursion, training) and the session
//! goes on with its definitions; under `nabla run` it ends the program with exit 130.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use super::{interrupt, nabla, scratch};

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let dir = scratch("pipe");
    let root = env!("CARGO_MANIFEST_DIR");
    let ex = |n: &str| format!("{root}/examples/{n}.net");
    std::fs::write(
        dir.join("loop.net"),
        "for i in 0..1000000 {\n  print(\"line {i}\")\n}\n",
    )
    .expect("write");
    // Each prints well over a pipe's 64 KiB, so the writer meets the closed pipe.
    let commands: Vec<Vec<String>> = vec![
        vec!["ir".into(), ex("efficientnet_b0")],
        vec!["ir".into(), ex("mobilenet_v2")],
        vec!["vjp".into(), ex("efficientnet_b0"), "--ir".into()],
        vec![
            "check".into(),
            "--json".into(),
            dir.join("bad.net").display().to_string(),
        ],
        vec!["run".into(), "loop.net".into()],
    ];
    let bad: String = (0..3000).map(|i| format!("let x{i} = y{i}\n")).collect();
    std::fs::write(dir.join("bad.net"), bad).expect("write");
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = nabla(&dir, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("one line");
        assert!(!line.is_empty(), "{args:?} printed nothing");
        drop(out); // the reader goes away, as `head -1` does
        let o = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe") && !err.contains("error"),
            "{args:?}: {err}"
        );
        // Ended by SIGPIPE (no exit code) or exited 0, as Unix tools do.
        assert!(
            matches!(o.status.code(), None | Some(0)),
            "{args:?}: {:?}",
            o.status
        );
    }
}

#[test]
fn ctrl_c_in_the_repl_stops_the_input_and_keeps_the_session() {
    let dir = scratch("ctrlc");
    let mut child = nabla(&dir, &["repl"])
        .env("NABLA_HISTORY", dir.join("h"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let mut stdin = child.stdin.take().expect("stdin");
    // Owns stdin: dropping it ends the session's input.
    let mut say = move |s: &str| {
        stdin.write_all(s.as_bytes()).expect("write");
        stdin.flush().expect("flush");
    };
    // Lines arrive through a channel, so a wait can time out instead of hanging.
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // The next line that starts with `want` (training prints its own lines too).
    let expect = |want: &str| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no line {want:?} within 2 minutes"));
        if line.trim().starts_with(want) {
            break;
        }
    };
    say("let keep = 20\nfn deep(n: int) -> int { if n == 0 { return 0 } deep(n - 1) + 1 }\n");
    // Inputs that run until interrupted, each announcing itself once it runs: a loop with
    // no call or store inside a function, a loop around a recursion, training steps on
    // the bundled digits.
    let runaway = [
        (
            "fn spin() {\n  print(\"running 0\")\n  var i = 0\n  while true { i += 1 }\n}\nspin()\n",
            "running 0",
        ),
        (
            "for i in 0..1000000000 { if i == 0 { print(\"running 1\") } let s = deep(1000) }\n",
            "running 1",
        ),
        (
            "import std.nn.*\nimport std.data.mnist\nnet L: f32[1, 28, 28] -> f32[10] {\n  flatten\n  dense(10)\n}\nlet m = train(L, mnist(), TrainConfig { epochs: 100000 })\n",
            "L: 7850 parameters",
        ),
    ];
    for (k, (input, marker)) in runaway.iter().enumerate() {
        say(input);
        expect(marker);
        // Well inside the loop (for training: some steps in).
        std::thread::sleep(Duration::from_millis(300));
        interrupt(child.id());
        say(&format!("print(keep + {k})\n"));
        expect(&format!("{}", 20 + k));
    }
    drop(say);
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    // One error per interrupted input (each error shows its code once).
    assert_eq!(err.matches("[E0701]").count(), runaway.len(), "{err}");
    assert_eq!(err.matches("interrupted").count(), runaway.len(), "{err}");
    assert!(o.status.success(), "{err}");
}

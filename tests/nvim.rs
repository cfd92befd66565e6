//! End-to-end with a real editor: headless Neovim (its built-in LSP client) runs
//! `tests/nvim/e2e.lua` against `nabla lsp` on `examples/` and a broken file, and this
//! checks what the editor received. Needs `nvim` on PATH: without it the test says so and
//! passes, unless `NABLA_REQUIRE_NVIM=1` (set by `.ci/run`, which installs Neovim).

use std::process::Command;

use serde_json::Value;

#[test]
fn neovim_gets_diagnostics_hover_and_definition() {
    if Command::new("nvim").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("NABLA_REQUIRE_NVIM").is_none(),
            "NABLA_REQUIRE_NVIM is set but nvim is not installed"
        );
        eprintln!("skipped: nvim is not installed (apt install neovim)");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = std::env::temp_dir().join(format!("nabla-nvim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let broken = dir.join("broken.net");
    std::fs::write(
        &broken,
        "import std.nn.*\n\nnet Broken: f32[1, 28, 28] -> f32[10] {\n  dense(10)\n}\n",
    )
    .expect("write");
    let out = dir.join("result.json");
    let status = Command::new("nvim")
        .args([
            "--headless",
            "--clean",
            "-n",
            "-i",
            "NONE",
            "-u",
            "NONE",
            "-c",
        ])
        .arg(format!("luafile {root}/tests/nvim/e2e.lua"))
        .env("NABLA_BIN", env!("CARGO_BIN_EXE_nabla"))
        .env("NABLA_ROOT", root)
        .env("NABLA_BROKEN", &broken)
        .env("NABLA_OUT", &out)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .status()
        .expect("run nvim");
    assert!(status.success(), "nvim exited with {status}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("nvim wrote its result"))
            .expect("json");
    assert_eq!(r["all_published"], true, "{r}");
    // Every example is clean; the broken file has its shape error on line 4.
    let examples = std::fs::read_dir(format!("{root}/examples"))
        .expect("examples")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "net"))
        })
        .count();
    let diags = r["diagnostics"].as_object().expect("diagnostics");
    assert_eq!(diags.len(), examples + 1, "{r}");
    for (file, ds) in diags {
        if file == "broken.net" {
            let ds = ds.as_array().expect("list");
            assert_eq!(ds.len(), 1, "{ds:?}");
            assert_eq!(ds[0]["code"], "E0301");
            assert_eq!(ds[0]["line"], 3);
            assert!(
                ds[0]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("insert `flatten` before `dense`")),
                "{ds:?}"
            );
        } else {
            assert_eq!(ds.as_array().map(Vec::len), Some(0), "{file}: {ds}");
        }
    }
    let hover = r["hover"].as_str().expect("a hover");
    assert!(
        hover.contains("layer dense(out: dim") && hover.contains("output `f32[B, 512]`"),
        "{hover}"
    );
    let def = &r["definition"];
    assert!(
        def["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("std/nn.net")),
        "{def}"
    );
    let nn = std::fs::read_to_string(def["file"].as_str().unwrap_or_default())
        .expect("the std copy exists");
    let line = nn
        .lines()
        .nth(def["line"].as_u64().unwrap_or(0) as usize)
        .unwrap_or_default();
    assert!(line.starts_with("layer dense("), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

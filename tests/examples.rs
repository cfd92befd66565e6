//! Every example checks clean, and `nabla info`'s figures match the published networks.

use nabla_lang::check::check_files;

fn check(name: &str) -> nabla_lang::check::Checked {
    let path = format!("{}/examples/{name}.net", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example exists");
    check_files(&[(path, text)], &nabla_stdlib::StdLoader)
}

#[test]
fn parameter_counts_match_the_published_nets() {
    let expected = [
        ("mnist_linear", 7_850),
        ("mnist_mlp", 669_706),
        ("mnist_cnn", 1_676_458),
        ("cifar_bn", 2_431_210),
        ("resnet34", 21_289_802),
        ("mobilenet_v2", 2_236_682),
        ("efficientnet_b0", 4_020_358),
        ("convnext_tiny", 27_827_818),
        ("vit_tiny", 5_526_346),
    ];
    for (name, params) in expected {
        let checked = check(name);
        let errors: Vec<_> = checked
            .diagnostics
            .iter()
            .map(|d| d.message.clone())
            .collect();
        assert!(checked.diagnostics.is_empty(), "{name}: {errors:?}");
        assert_eq!(checked.nets.len(), 1, "{name}");
        let net = &checked.nets[0];
        assert!(net.ok, "{name}");
        assert_eq!(net.params, params, "{name}");
        assert_eq!(net.output, "f32[B, 10]", "{name}");
        // The per-stage counts add up to the total.
        assert_eq!(
            net.stages.iter().map(|s| s.params).sum::<u64>(),
            params,
            "{name}"
        );
    }
}

#[test]
fn multiply_adds_match_the_published_figures() {
    // Published figures (torchvision / timm, 1000 classes) less the head's difference.
    let cases = [
        ("mnist_mlp", 668_672u64, 0.0),
        ("resnet34", 3_663_254_528, 0.02),
        ("mobilenet_v2", 299_507_072, 0.02),
    ];
    for (name, macs, tol) in cases {
        let net = &check(name).nets[0];
        let rel = (net.macs as f64 - macs as f64).abs() / macs as f64;
        assert!(rel <= tol, "{name}: {} vs {macs}", net.macs);
    }
}

#[test]
fn structural_parameter_names() {
    let net = &check("mnist_mlp").nets[0];
    let names: Vec<&str> = net.param_names.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"
        ]
    );
    assert_eq!(net.param_names[0].1, vec![512, 784]);
}

#[test]
fn stage_shapes_of_the_cnn() {
    let net = &check("mnist_cnn").nets[0];
    let shapes: Vec<&str> = net.stages.iter().map(|s| s.output.as_str()).collect();
    assert_eq!(
        shapes,
        [
            "f32[B, 32, 28, 28]",
            "f32[B, 32, 28, 28]",
            "f32[B, 32, 28, 28]",
            "f32[B, 32, 28, 28]",
            "f32[B, 32, 28, 28]",
            "f32[B, 32, 28, 28]",
            "f32[B, 32, 14, 14]",
            "f32[B, 64, 14, 14]",
            "f32[B, 64, 14, 14]",
            "f32[B, 64, 14, 14]",
            "f32[B, 64, 14, 14]",
            "f32[B, 64, 14, 14]",
            "f32[B, 64, 14, 14]",
            "f32[B, 64, 7, 7]",
            "f32[B, 3136]",
            "f32[B, 512]",
            "f32[B, 512]",
            "f32[B, 10]"
        ]
    );
}

/// Every code the checker can emit is documented in docs/errors.md, with an example.
#[test]
fn every_code_is_documented() {
    let root = env!("CARGO_MANIFEST_DIR");
    let docs = std::fs::read_to_string(format!("{root}/docs/errors.md")).expect("docs/errors.md");
    let mut stack = vec![std::path::PathBuf::from(format!("{root}/lang/src"))];
    let mut codes = std::collections::BTreeSet::new();
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).expect("dir").flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).expect("read");
                for (i, _) in text.match_indices("\"E0") {
                    codes.insert(text[i + 1..i + 6].to_string());
                }
            }
        }
    }
    assert!(codes.len() > 30);
    for c in codes {
        assert!(
            docs.contains(&format!("## {c}:")),
            "{c} is not documented in docs/errors.md"
        );
        assert!(
            docs.contains(&format!("[{c}] Error")) || docs.contains(&format!("[{c}] Warning")),
            "{c} has no example output in docs/errors.md"
        );
    }
}

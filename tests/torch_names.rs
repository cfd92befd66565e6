//! Every example net names and shapes its parameters and state exactly as its PyTorch
//! twin's state dict does: torchvision's own classes for the five standard nets, the
//! `nn.Sequential` of the same layers for the four book nets. The key lists in
//! `tests/testdata/torch_keys/` were written by `bench/torch_keys.py` from torch and
//! torchvision themselves, so a renamed or re-laid-out parameter fails here.

use std::collections::BTreeMap;

use nabla_lang::check::check_files;

const NETS: [&str; 9] = [
    "mnist_linear",
    "mnist_mlp",
    "mnist_cnn",
    "cifar_bn",
    "resnet34",
    "mobilenet_v2",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_tiny",
];

/// `key -> shape` from a key list.
fn torch_keys(net: &str) -> BTreeMap<String, Vec<u64>> {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/tests/testdata/torch_keys/{net}.txt"))
        .expect("key list");
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (key, shape) = l.split_once(' ').expect("`key shape`");
            let dims = shape
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.parse().expect("dim"))
                .collect();
            (key.to_string(), dims)
        })
        .collect()
}

/// `key -> shape` of the example's parameters and state, as nabla names them.
fn nabla_keys(net: &str) -> BTreeMap<String, Vec<u64>> {
    let path = format!("{}/examples/{net}.net", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example exists");
    let checked = check_files(&[(path, text)], &nabla_stdlib::StdLoader);
    assert!(
        checked.diagnostics.is_empty(),
        "{net}: {:?}",
        checked.diagnostics
    );
    let info = &checked.nets[0];
    let mut keys = BTreeMap::new();
    for (name, shape) in info.param_names.iter().chain(&info.state_names) {
        let old = keys.insert(name.clone(), shape.clone());
        assert!(old.is_none(), "{net}: `{name}` twice");
    }
    keys
}

#[test]
fn every_example_has_its_pytorch_twins_state_dict() {
    let mut report = String::new();
    for net in NETS {
        let (want, got) = (torch_keys(net), nabla_keys(net));
        for (k, shape) in &want {
            match got.get(k) {
                None => report.push_str(&format!("{net}: missing `{k}` {shape:?}\n")),
                Some(s) if s != shape => {
                    report.push_str(&format!("{net}: `{k}` is {s:?}, PyTorch's {shape:?}\n"))
                }
                Some(_) => {}
            }
        }
        for (k, shape) in &got {
            if !want.contains_key(k) {
                report.push_str(&format!("{net}: extra `{k}` {shape:?}\n"));
            }
        }
        assert!(want.len() > 1, "{net}: empty key list");
    }
    assert!(report.is_empty(), "\n{report}");
}

#[test]
fn the_key_counts_are_torchvisions() {
    // The counts the issue names, so that a regenerated list cannot quietly shrink.
    for (net, n) in [
        ("resnet34", 218),
        ("mobilenet_v2", 314),
        ("efficientnet_b0", 360),
        ("convnext_tiny", 182),
        ("vit_tiny", 152),
    ] {
        assert_eq!(torch_keys(net).len(), n, "{net}");
    }
}

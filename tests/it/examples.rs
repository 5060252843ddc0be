//! Every example file in the repository loads.

use std::path::Path;

#[test]
fn example_policies_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            ipcgate::policy::Policy::load(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the example policies in policy/");
}

#[test]
fn example_config_loads() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.example.toml");
    let c = ipcgate::config::Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.routes.is_empty());
}

#[test]
fn readme_policy_examples_load() {
    // Every ```json block in policy/README.md is a complete, valid policy.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/README.md"))
            .unwrap();
    let mut n = 0;
    for block in readme.split("```json").skip(1) {
        let json = block.split("```").next().unwrap();
        ipcgate::policy::Policy::from_json(json, "policy/README.md".as_ref())
            .unwrap_or_else(|e| panic!("{e}\n{json}"));
        n += 1;
    }
    assert!(
        n >= 3,
        "policy/README.md should show its examples as ```json blocks"
    );
}

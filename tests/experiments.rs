//! Every experiment file loads: all its runs of all its profiles deserialise and validate (the
//! sweep loader checks every profile, not only the selected one), so no file can rot unnoticed.

use std::path::Path;

use bst::sweep::Sweep;

#[test]
fn every_experiment_file_and_profile_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        let sweep = Sweep::load(&file, None, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(!sweep.runs.is_empty(), "{}: no runs", file.display());
    }
}

//! Every kept input of every fuzz target, replayed on stable: the seeds (`fuzz/seeds/<target>/`)
//! and each crash libFuzzer found (`fuzz/regressions/<target>/`, added with its fix). A target
//! with no seeds fails here, so a new target cannot be added without inputs to start from.

use std::path::Path;

fn inputs(kind: &str, target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_seed_and_every_regression_input_passes_its_target() {
    let mut total = 0;
    for &(target, run) in clinic_fuzz::TARGETS {
        let seeds = inputs("seeds", target);
        assert!(!seeds.is_empty(), "fuzz/seeds/{target}/ has no inputs");
        for path in seeds.iter().chain(&inputs("regressions", target)) {
            let data = std::fs::read(path).unwrap();
            // A panic names the input: the harness's own message follows.
            eprintln!("{target}: {}", path.display());
            run(&data);
            total += 1;
        }
    }
    println!("{total} inputs replayed");
}

//! Every kernel in `kernels/` compiles with NVRTC for sm_80 (A100) and sm_90 (H100), no GPU
//! needed. Prints ptxas' register / spill report per kernel (kernels/README.md quotes it).
//!
//! Without libnvrtc the test prints `skipped: NVRTC not found` and passes — unless `CI` is
//! set: `.ci/run` installs NVRTC, so there a missing library is a failure.

use fedclip::cuda::nvrtc::Nvrtc;
use fedclip::cuda::sources::{KERNEL_SOURCES, KernelSource, kernel_names};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn kernels_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

/// Every `.cu` file in kernels/, read from disk (so a file not yet registered in
/// KERNEL_SOURCES is compiled too).
fn sources_on_disk() -> Vec<KernelSource> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kernels_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let source: &'static str = Box::leak(std::fs::read_to_string(&p).unwrap().into());
            let names: Vec<&'static str> = kernel_names(source)
                .into_iter()
                .map(|n| &*Box::leak(n.into_boxed_str()))
                .collect();
            KernelSource {
                file: Box::leak(p.file_name().unwrap().to_string_lossy().into()),
                source,
                kernels: Box::leak(names.into_boxed_slice()),
            }
        })
        .collect()
}

fn nvrtc() -> Option<Nvrtc> {
    match Nvrtc::load() {
        Ok(n) => Some(n),
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set, so NVRTC must be installed (.ci/run does it): {e:#}");
            }
            // Past the harness' capture, so a plain `cargo test` shows the skip.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped: NVRTC not found ({e:#})");
            None
        }
    }
}

#[test]
fn embedded_sources_are_every_cu_file() {
    let disk = sources_on_disk();
    let on_disk: BTreeSet<&str> = disk.iter().map(|k| k.file).collect();
    let embedded: BTreeSet<&str> = KERNEL_SOURCES.iter().map(|k| k.file).collect();
    assert_eq!(
        on_disk, embedded,
        "kernels/*.cu and KERNEL_SOURCES (src/cuda/sources.rs) disagree: register every .cu file there"
    );
    for k in KERNEL_SOURCES {
        let d = disk.iter().find(|d| d.file == k.file).unwrap();
        assert!(
            d.source == k.source,
            "{}: the embedded copy differs from the file (rebuild)",
            k.file
        );
        let listed: BTreeSet<&str> = k.kernels.iter().copied().collect();
        let defined: BTreeSet<&str> = d.kernels.iter().copied().collect();
        assert_eq!(
            listed, defined,
            "{}: the kernels listed in KERNEL_SOURCES are not those the file defines",
            k.file
        );
    }
}

#[test]
fn kernel_names_are_parsed_from_source() {
    let src = "// extern \"C\" __global__ void commented(int x)\n\
               extern \"C\" __global__ void __launch_bounds__(256, 2)\n    fc_a(int x) {}\n\
               extern \"C\" __global__ void fc_b(const float* p) {}\n\
               extern \"C\" int host_side(int);\n";
    assert_eq!(kernel_names(src), vec!["fc_a", "fc_b"]);
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    let Some(nv) = nvrtc() else { return };
    println!("NVRTC {}.{} from {}", nv.version.0, nv.version.1, nv.path);
    let sources = sources_on_disk();
    for arch in [80, 90] {
        for src in &sources {
            let out = nv
                .compile(src, arch, &["--ptxas-options=-v"])
                .unwrap_or_else(|e| panic!("kernels/{} for sm_{arch}: {e:#}", src.file));
            assert!(!out.cubin.is_empty(), "{}: empty cubin", src.file);
            // ptxas -v: "Compiling entry function 'x'", then "N bytes spill stores" and
            // "Used R registers" lines.
            let mut current = String::new();
            for line in out.log.lines() {
                if let Some(rest) = line.split("entry function '").nth(1) {
                    current = rest.split('\'').next().unwrap_or("").to_string();
                } else if let Some(rest) = line.split("Function properties for ").nth(1) {
                    current = rest.trim().to_string();
                } else if line.contains("spill stores") {
                    let spills = line
                        .split(',')
                        .map(str::trim)
                        .collect::<Vec<_>>()
                        .join(", ");
                    let spills = spills
                        .trim_start_matches("ptxas")
                        .trim_start_matches(['.', ' ']);
                    println!("  sm_{arch} {current}: {spills}");
                    if !line.contains(" 0 bytes spill stores") {
                        println!("  WARNING: sm_{arch} {current} spills registers");
                    }
                } else if line.contains("Used") && line.contains("registers") {
                    let used = line.split(':').nth(1).unwrap_or(line).trim();
                    println!("  sm_{arch} {current}: {used}");
                } else if line.contains("warning") {
                    // Not fatal: warnings differ between NVRTC versions.
                    println!("  WARNING kernels/{} for sm_{arch}: {line}", src.file);
                }
            }
            for k in src.kernels {
                assert!(
                    out.log.is_empty() || out.log.contains(k),
                    "{}: ptxas did not report {k}",
                    src.file
                );
            }
        }
    }
}

/// A driver older than every NVRTC found: the error names both versions (not a bare
/// cuModuleLoadData failure later).
#[test]
fn nvrtc_newer_than_the_driver_is_refused_by_name() {
    let Some(nv) = nvrtc() else { return };
    let older = nv.version.0 - 1;
    match Nvrtc::load_for_driver(older) {
        // Another, older NVRTC is installed too: it is the one taken.
        Ok(other) => assert!(other.version.0 <= older, "took NVRTC {:?}", other.version),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(
                msg.contains(&format!("supports CUDA {older}.x"))
                    && msg.contains(&format!("NVRTC {}.{}", nv.version.0, nv.version.1))
                    && msg.contains(&format!("libnvrtc.so.{older}")),
                "{msg}"
            );
        }
    }
    let same = Nvrtc::load_for_driver(nv.version.0).unwrap();
    assert!(same.version.0 <= nv.version.0);
}

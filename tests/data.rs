//! The data layer: numpy-identical shuffles and splits (against
//! tests/fixtures/splits/numpy_shuffle.json, from tests/reference/make_split_fixtures.py), the
//! ImageFolder scan of data/pacs-mini, Dirichlet clients, client sampling, splits.json, and
//! errors for bad layouts.

use fedclip::data::rng::{Mt19937, RandomState};
use fedclip::data::{
    Dataset, Preset, PromptTemplate, SplitConfig, Splits, dirichlet_partition, make_splits,
    numpy_permutation, reference_split, sample_clients,
};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> Value {
    let path = repo().join("tests/fixtures/splits/numpy_shuffle.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    usizes(v).into_iter().map(|x| x as u32).collect()
}

fn bits(v: &Value) -> u64 {
    v.as_str().unwrap().parse().unwrap()
}

fn fnv1a64(perm: &[usize]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &p in perm {
        for b in (p as u32).to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn pacs_mini() -> PathBuf {
    repo().join("data/pacs-mini")
}

#[test]
fn shuffle_matches_numpy_for_every_seed_and_size() {
    let fx = fixture();
    let cases = fx["shuffle"].as_array().unwrap();
    assert_eq!(cases.len(), 50);
    for case in cases {
        let seed = case["seed"].as_u64().unwrap() as u32;
        let n = case["n"].as_u64().unwrap() as usize;
        let perm = numpy_permutation(seed, n);
        assert_eq!(perm.len(), n);
        if let Some(full) = case.get("perm") {
            assert_eq!(perm, usizes(full), "seed {seed} n {n}");
        } else {
            assert_eq!(perm[..50], usizes(&case["head"])[..], "seed {seed} n {n}");
            assert_eq!(
                perm[n - 50..],
                usizes(&case["tail"])[..],
                "seed {seed} n {n}"
            );
        }
        assert_eq!(
            fnv1a64(&perm).to_string(),
            case["fnv1a64"].as_str().unwrap(),
            "seed {seed} n {n}"
        );
    }
}

fn check_raw(rs: &mut RandomState, case: &Value, what: &str) {
    assert_eq!(
        rs.mt().state_key()[..8].to_vec(),
        u32s(&case["key"]),
        "{what}: state"
    );
    let u: Vec<u32> = (0..12).map(|_| rs.mt().next_u32()).collect();
    assert_eq!(u, u32s(&case["u32"]), "{what}: raw draws");
    for (i, b) in case["random_sample_bits"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(
            rs.random_sample().to_bits(),
            bits(b),
            "{what}: random_sample {i}"
        );
    }
}

#[test]
fn raw_mt19937_streams_match_numpy() {
    let fx = fixture();
    for case in fx["raw"].as_array().unwrap() {
        let seed = case["seed"].as_u64().unwrap() as u32;
        check_raw(&mut RandomState::new(seed), case, &format!("seed {seed}"));
    }
    for case in fx["init_by_array"].as_array().unwrap() {
        let key = u32s(&case["init_key"]);
        check_raw(
            &mut RandomState::from_key(&key),
            case,
            &format!("key {:?}", &key[..key.len().min(4)]),
        );
    }
    // The generator runs past a state refill (624 words) consistently.
    let mut a = Mt19937::new(5);
    let first: Vec<u32> = (0..2000).map(|_| a.next_u32()).collect();
    let mut b = Mt19937::new(5);
    assert_eq!(first, (0..2000).map(|_| b.next_u32()).collect::<Vec<_>>());
}

#[test]
fn dirichlet_matches_numpy_legacy() {
    let fx = fixture();
    for case in fx["dirichlet"].as_array().unwrap() {
        let key = u32s(&case["key"]);
        let alpha = case["alpha"].as_f64().unwrap();
        let k = case["k"].as_u64().unwrap() as usize;
        let mut rs = RandomState::from_key(&key);
        for (r, row) in case["rows_bits"].as_array().unwrap().iter().enumerate() {
            let got = rs.dirichlet(&vec![alpha; k]);
            let want: Vec<f64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|b| f64::from_bits(bits(b)))
                .collect();
            for (g, w) in got.iter().zip(&want) {
                // Same algorithm and operation order; only libm's ln/pow could differ.
                assert!(
                    (g - w).abs() <= 1e-12 * w.abs().max(1e-300) || g == w,
                    "alpha {alpha} key {key:?} row {r}: {got:?} vs {want:?}"
                );
            }
        }
    }
}

#[test]
fn reference_split_matches_numpy_for_pacs_sizes() {
    let fx = fixture();
    for case in fx["pacs_splits"].as_array().unwrap() {
        let n = case["n"].as_u64().unwrap() as usize;
        let (train, val, test) = reference_split(n, 0, 0.6);
        assert_eq!(train, usizes(&case["train"]), "n {n} train");
        assert_eq!(val, usizes(&case["val"]), "n {n} val");
        assert_eq!(test, usizes(&case["test"]), "n {n} test");
        // int(n*0.6), int(n*0.2), int(n*0.2): e.g. 2048 -> 1228, 409, 409 (2 left out).
        assert_eq!(train.len(), (n as f64 * 0.6) as usize);
        assert_eq!(val.len(), (n as f64 * 0.2) as usize);
    }
    let (tr, va, te) = reference_split(2048, 0, 0.6);
    assert_eq!((tr.len(), va.len(), te.len()), (1228, 409, 409));
}

#[test]
fn dirichlet_partition_matches_numpy_implementation() {
    let fx = fixture();
    for case in fx["dirichlet_partition"].as_array().unwrap() {
        let labels = usizes(&case["labels"]);
        let parts = dirichlet_partition(
            &labels,
            case["num_classes"].as_u64().unwrap() as usize,
            case["clients"].as_u64().unwrap() as usize,
            case["alpha"].as_f64().unwrap(),
            case["seed"].as_u64().unwrap() as u32,
            case["domain"].as_u64().unwrap() as u32,
            case["min_files"].as_u64().unwrap() as usize,
        )
        .unwrap();
        let want: Vec<Vec<usize>> = case["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(usizes)
            .collect();
        assert_eq!(parts, want, "case {case:?}");
        let mut all: Vec<usize> = parts.concat();
        all.sort();
        assert_eq!(all, (0..labels.len()).collect::<Vec<_>>());
    }
}

#[test]
fn client_sampling_matches_numpy_implementation() {
    let fx = fixture();
    for case in fx["sample_clients"].as_array().unwrap() {
        let got = sample_clients(
            case["n"].as_u64().unwrap() as usize,
            case["fraction"].as_f64().unwrap(),
            case["seed"].as_u64().unwrap() as u32,
            case["round"].as_u64().unwrap() as u32,
        );
        assert_eq!(got, usizes(&case["chosen"]), "case {case}");
    }
    assert_eq!(sample_clients(100, 0.29, 1, 0).len(), 29);
    assert_eq!(sample_clients(5, 0.01, 1, 0).len(), 1);
}

#[test]
fn pacs_mini_scans_like_image_folder() {
    let ds = Dataset::scan(&pacs_mini()).unwrap();
    assert_eq!(ds.preset, Some(Preset::Pacs));
    assert!(ds.warnings.is_empty(), "{:?}", ds.warnings);
    assert_eq!(
        ds.domain_names(),
        ["art_painting", "cartoon", "photo", "sketch"]
    );
    assert_eq!(
        ds.classes,
        [
            "dog", "elephant", "giraffe", "guitar", "horse", "house", "person"
        ]
    );
    for d in &ds.domains {
        assert_eq!(d.samples.len(), 140, "{}", d.name);
        // ImageFolder order: by class, then by sorted file name.
        for (i, s) in d.samples.iter().enumerate() {
            assert_eq!(s.label, i / 20);
            assert_eq!(s.path, ds.root.join(&s.rel));
            assert!(
                s.rel
                    .starts_with(&format!("{}/{}/", d.name, ds.classes[s.label]))
            );
            assert!(s.path.is_file());
        }
        for w in d.samples.windows(2) {
            if w[0].label == w[1].label {
                assert!(w[0].rel < w[1].rel);
            }
        }
        let mut expected: Vec<String> = Vec::new();
        for c in &ds.classes {
            let mut names: Vec<String> = std::fs::read_dir(d.dir.join(c))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            expected.extend(names.into_iter().map(|n| format!("{}/{c}/{n}", d.name)));
        }
        let got: Vec<String> = d.samples.iter().map(|s| s.rel.clone()).collect();
        assert_eq!(got, expected);
    }
    assert_eq!(ds.num_files(), 560);
    assert_eq!(
        ds.prompts(&PromptTemplate::default())[0],
        "a picture of a dog"
    );
    assert!(ds.domain_index("cartoon").is_ok());
}

#[test]
fn prompts_clean_class_names() {
    let t = PromptTemplate::default();
    assert_eq!(t.render("Alarm_Clock"), "a picture of a alarm clock");
    let raw = PromptTemplate {
        template: "a photo of a {}.".into(),
        clean_names: false,
    };
    assert_eq!(raw.render("Alarm_Clock"), "a photo of a Alarm_Clock.");
    assert_eq!(
        PromptTemplate::new("a sketch of a").render("dog"),
        "a sketch of a dog"
    );
}

#[test]
fn presets_are_detected_and_named() {
    assert_eq!(
        Preset::detect(&["sketch", "photo", "cartoon", "art_painting"]),
        Some(Preset::Pacs)
    );
    assert_eq!(
        Preset::detect(&["Art", "Clipart", "Product", "Real World"]),
        Some(Preset::OfficeHome)
    );
    assert_eq!(
        Preset::detect(&["Caltech101", "LabelMe", "SUN09", "VOC2007"]),
        Some(Preset::Vlcs)
    );
    assert_eq!(Preset::detect(&["photo", "sketch"]), None);
    assert_eq!(
        Preset::from_name("Office_Home").unwrap(),
        Preset::OfficeHome
    );
    assert_eq!(Preset::from_name("DomainNet").unwrap(), Preset::DomainNet);
    assert_eq!(Preset::DomainNet.domains().len(), 6);
    assert_eq!(Preset::DomainNet.num_classes(), 345);
    assert!(Preset::from_name("cifar").is_err());
}

#[test]
fn reference_splits_of_pacs_mini() {
    let ds = Dataset::scan(&pacs_mini()).unwrap();
    let cfg = SplitConfig {
        test_domains: vec!["art_painting".into()],
        ..SplitConfig::default()
    };
    let splits = make_splits(&ds, &cfg).unwrap();
    assert_eq!(splits.clients.len(), 4);
    let names: Vec<&str> = splits.clients.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["art_painting", "cartoon", "photo", "sketch"]);
    let held = &splits.clients[0];
    assert!(held.held_out && held.train.is_empty() && held.val.is_empty());
    assert_eq!(held.test, (0..140).collect::<Vec<_>>());
    // Every training domain: the seed-0 permutation of 140 cut at 84 / 28 / 28.
    let (tr, va, te) = reference_split(140, 0, 0.6);
    assert_eq!((tr.len(), va.len(), te.len()), (84, 28, 28));
    let fx = fixture();
    let mini = fx["pacs_splits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["n"] == 140)
        .unwrap();
    for c in &splits.clients[1..] {
        assert!(!c.held_out);
        assert_eq!(c.train, usizes(&mini["train"]), "{}", c.name);
        assert_eq!(c.val, usizes(&mini["val"]));
        assert_eq!(c.test, usizes(&mini["test"]));
    }
    assert_eq!(splits.training_clients(), [1, 2, 3]);
    assert_eq!(splits.held_out_clients(), [0]);
    // Deterministic: a second run (and a rescan) gives the same splits.
    let again = make_splits(&Dataset::scan(&pacs_mini()).unwrap(), &cfg).unwrap();
    assert_eq!(splits, again);
    // A different seed gives different splits.
    let other = make_splits(
        &ds,
        &SplitConfig {
            seed: 1,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(splits.clients[1].train, other.clients[1].train);
}

#[test]
fn unknown_test_domain_lists_the_valid_ones() {
    let ds = Dataset::scan(&pacs_mini()).unwrap();
    let cfg = SplitConfig {
        test_domains: vec!["photos".into()],
        ..SplitConfig::default()
    };
    let err = format!("{:#}", make_splits(&ds, &cfg).unwrap_err());
    assert!(err.contains("photos"), "{err}");
    assert!(
        err.contains("art_painting, cartoon, photo, sketch"),
        "{err}"
    );
    let all = SplitConfig {
        test_domains: ds.domain_names().iter().map(|s| s.to_string()).collect(),
        ..SplitConfig::default()
    };
    assert!(make_splits(&ds, &all).is_err());
}

#[test]
fn dirichlet_clients_are_reproducible_and_cover_every_file_once() {
    let ds = Dataset::scan(&pacs_mini()).unwrap();
    let cfg = SplitConfig {
        test_domains: vec!["sketch".into()],
        clients_per_domain: 3,
        dirichlet_alpha: 0.3,
        seed: 7,
        ..SplitConfig::default()
    };
    let a = make_splits(&ds, &cfg).unwrap();
    let b = make_splits(&ds, &cfg).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.clients.len(), 3 * 3 + 1);
    assert_eq!(a.clients[0].name, "art_painting#0");
    assert_eq!(a.clients[2].name, "art_painting#2");
    assert_eq!(a.clients[9].name, "sketch");
    for (d, domain) in ds.domains.iter().enumerate() {
        let clients: Vec<_> = a.clients.iter().filter(|c| c.domain == d).collect();
        let mut all: Vec<usize> = clients.iter().flat_map(|c| c.files.clone()).collect();
        all.sort();
        assert_eq!(
            all,
            (0..domain.samples.len()).collect::<Vec<_>>(),
            "{}",
            domain.name
        );
        for c in clients {
            let mut split: Vec<usize> = [c.train.clone(), c.val.clone(), c.test.clone()].concat();
            let n = split.len();
            split.sort();
            split.dedup();
            assert_eq!(split.len(), n, "{}: a file in two splits", c.name);
            assert!(split.iter().all(|i| c.files.binary_search(i).is_ok()));
            assert!(c.files.len() - n <= 2, "{}", c.name);
            if !c.held_out {
                assert!(c.files.len() >= 10, "{}: {} files", c.name, c.files.len());
                assert_eq!(c.train.len(), (c.files.len() as f64 * 0.6) as usize);
            }
        }
    }
    // Label skew is real: some client's class histogram is far from uniform.
    let skewed = a.clients.iter().filter(|c| !c.held_out).any(|c| {
        let mut h = [0usize; 7];
        for &i in &c.files {
            h[ds.domains[c.domain].samples[i].label] += 1;
        }
        h.iter().max().unwrap() * 7 > 2 * c.files.len()
    });
    assert!(skewed);
    // Another seed, another partition.
    let c = make_splits(
        &ds,
        &SplitConfig {
            seed: 8,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(a.clients[0].files, c.clients[0].files);
}

#[test]
fn round_sampling_is_reproducible() {
    let ds = Dataset::scan(&pacs_mini()).unwrap();
    let cfg = SplitConfig {
        test_domains: vec!["photo".into()],
        clients_per_domain: 4,
        dirichlet_alpha: 1.0,
        ..SplitConfig::default()
    };
    let s = make_splits(&ds, &cfg).unwrap();
    let train: HashSet<usize> = s.training_clients().into_iter().collect();
    assert_eq!(train.len(), 12);
    let mut distinct = HashSet::new();
    for round in 0..10 {
        let chosen = s.sample_round(0.25, round);
        assert_eq!(chosen, s.sample_round(0.25, round));
        assert_eq!(chosen.len(), 3);
        assert!(chosen.iter().all(|i| train.contains(i)));
        distinct.insert(chosen);
    }
    assert!(distinct.len() > 1);
    assert_eq!(s.sample_round(1.0, 3), s.training_clients());
}

#[test]
fn splits_json_round_trips() {
    let ds = Dataset::scan(&pacs_mini()).unwrap();
    let cfg = SplitConfig {
        test_domains: vec!["cartoon".into()],
        clients_per_domain: 2,
        ..SplitConfig::default()
    };
    let s = make_splits(&ds, &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out/splits.json");
    s.write_json(&ds, &path).unwrap();
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let keys: Vec<&String> = v["clients"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 7);
    let first = &v["clients"]["art_painting#0"];
    let rel = first["train"][0].as_str().unwrap();
    assert!(rel.starts_with("art_painting/"));
    assert!(ds.root.join(rel).is_file());
    assert_eq!(
        v["clients"]["cartoon"]["test"].as_array().unwrap().len(),
        140
    );
    let back = Splits::read_json(&path, &ds).unwrap();
    assert_eq!(back, s);
    // Client order is kept in the file.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.find("\"art_painting#1\"").unwrap() < text.find("\"cartoon\": {").unwrap());
}

fn touch(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"not really an image").unwrap();
}

fn layout(root: &Path, domains: &[&str], classes: &[&str]) {
    for d in domains {
        for c in classes {
            touch(&root.join(d).join(c).join("a.jpg"));
        }
    }
}

fn scan_err(root: &Path) -> String {
    format!("{:#}", Dataset::scan(root).unwrap_err())
}

#[test]
fn missing_root_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("nowhere");
    let err = scan_err(&root);
    assert!(err.contains(&root.display().to_string()), "{err}");
}

#[test]
fn root_without_domains_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    touch(&dir.path().join("README.md"));
    let err = scan_err(dir.path());
    assert!(err.contains("no domain folders"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn empty_class_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path(), &["d1", "d2"], &["cat", "dog"]);
    let empty = dir.path().join("d2/dog");
    std::fs::remove_file(empty.join("a.jpg")).unwrap();
    touch(&empty.join("notes.txt"));
    let err = scan_err(dir.path());
    assert!(err.contains(&empty.display().to_string()), "{err}");
    assert!(err.contains("no images"), "{err}");
}

#[test]
fn domain_missing_a_class_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path(), &["d1", "d2", "d3"], &["cat", "dog"]);
    std::fs::remove_dir_all(dir.path().join("d3/cat")).unwrap();
    let err = scan_err(dir.path());
    assert!(
        err.contains(&dir.path().join("d3").display().to_string()),
        "{err}"
    );
    assert!(err.contains("cat"), "{err}");
    // A class present only in one domain is missing from the others.
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path(), &["d1", "d2"], &["cat", "dog"]);
    touch(&dir.path().join("d1/owl/x.png"));
    let err = scan_err(dir.path());
    assert!(
        err.contains(&dir.path().join("d2").display().to_string()) && err.contains("owl"),
        "{err}"
    );
}

#[test]
fn domain_without_classes_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path(), &["d1"], &["cat"]);
    std::fs::create_dir_all(dir.path().join("d2")).unwrap();
    let err = scan_err(dir.path());
    assert!(
        err.contains(&dir.path().join("d2").display().to_string()),
        "{err}"
    );
}

#[test]
fn generic_layout_follows_image_folder_rules() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Extensions are matched case-insensitively; other files are skipped; nested folders
    // are walked in sorted(os.walk()) order, by directory path string: "sub" < "sub-b" <
    // "sub/deeper" (a prefix first, then '-' < '/'), checked against Python.
    for f in [
        "d1/cat/B.JPG",
        "d1/cat/a.png",
        "d1/cat/c.webp",
        "d1/cat/notes.txt",
        "d1/cat/sub/z.jpeg",
        "d1/cat/sub-b/y.bmp",
        "d1/cat/sub/deeper/x.tif",
        "d1/dog/1.pgm",
        "d2/cat/q.ppm",
        "d2/dog/r.TIFF",
        ".cache/x/y.jpg",
    ] {
        touch(&root.join(f));
    }
    let ds = Dataset::scan(root).unwrap();
    assert_eq!(ds.preset, None);
    assert_eq!(ds.domain_names(), ["d1", "d2"]);
    let rels: Vec<&str> = ds.domains[0]
        .samples
        .iter()
        .map(|s| s.rel.as_str())
        .collect();
    assert_eq!(
        rels,
        [
            "d1/cat/B.JPG",
            "d1/cat/a.png",
            "d1/cat/c.webp",
            "d1/cat/sub/z.jpeg",
            "d1/cat/sub-b/y.bmp",
            "d1/cat/sub/deeper/x.tif",
            "d1/dog/1.pgm",
        ]
    );
    let labels: Vec<usize> = ds.domains[0].labels();
    assert_eq!(labels, [0, 0, 0, 0, 0, 0, 1]);
    // A preset asked for but absent.
    let err = format!(
        "{:#}",
        Dataset::scan_with(root, Some(Preset::Pacs)).unwrap_err()
    );
    assert!(err.contains("art_painting"), "{err}");
}

#[test]
fn preset_subset_of_classes_warns() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path(), Preset::Vlcs.domains(), &["bird", "car"]);
    let ds = Dataset::scan(dir.path()).unwrap();
    assert_eq!(ds.preset, Some(Preset::Vlcs));
    assert_eq!(ds.warnings.len(), 1, "{:?}", ds.warnings);
    assert!(ds.warnings[0].contains("2 classes"));
}

//! Helpers shared by the integration tests: reading reference fixtures and comparing.
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A reference file produced by tests/reference/make_fixtures.py, fully read.
pub struct Fixture {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    pub metadata: HashMap<String, String>,
}

impl Fixture {
    pub fn load(path: &Path) -> Fixture {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).expect("fixture is valid safetensors");
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data: Vec<f64> = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("fixture tensor {name}: unexpected dtype {other:?}"),
            };
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        Fixture {
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
        }
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.get(name).1.iter().map(|&v| v as f32).collect()
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.get(name).1.iter().map(|&v| v as u32).collect()
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.get(name).0.clone()
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor `{name}`"))
    }
}

/// Relative error ‖got − want‖ / ‖want‖ over the whole tensor, in f64.
pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        diff += (g as f64 - w as f64).powi(2);
        norm += (w as f64).powi(2);
    }
    (diff / norm.max(1e-30)).sqrt()
}

/// Checks `got` against `want` element by element with `approx`: each element within
/// `rel` of the reference, or within `rel` × the tensor's RMS for elements near zero.
/// Panics naming the tensor and the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let rms =
        (want.iter().map(|&w| (w as f64).powi(2)).sum::<f64>() / want.len() as f64).sqrt() as f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            approx::relative_eq!(g, w, epsilon = rel * rms, max_relative = rel),
            "{what}: element {i}: got {g}, want {w} (tensor rms {rms}, relative error {:.2e})",
            relative_error(got, want)
        );
    }
}

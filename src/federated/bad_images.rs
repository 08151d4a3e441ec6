//! Images a run cannot use, found before extraction: every file the feature cache lacks is
//! decoded once (the pixel limits first, on the source and on what the resize makes of it:
//! [`decode_checked`], as the encoder does), so that one error lists every bad file, or with
//! `--skip-bad` each is skipped with a warning and listed in `summary.json`. Cached files
//! decoded before and need no check.

use crate::data::{Dataset, Splits};
use crate::features::FeatureCache;
use crate::preprocess::{PreprocessConfig, decode_checked};
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// `(domain, sample)` indices of the images left out, with their paths relative to the root.
#[derive(Default)]
pub struct BadImages {
    pub samples: BTreeSet<(usize, usize)>,
    pub rel_paths: Vec<String>,
}

/// Decodes the uncached images of `dataset`; an error listing every failure, or with
/// `skip_bad` a warning for each and the list of those to leave out.
pub fn find(
    dataset: &Dataset,
    cache: &FeatureCache,
    pre: &PreprocessConfig,
    skip_bad: bool,
) -> Result<BadImages> {
    let mut failures: Vec<(usize, usize, String)> = Vec::new();
    for (d, domain) in dataset.domains.iter().enumerate() {
        let paths = domain.paths();
        let todo = cache.uncached_images(&paths)?;
        let mut found: Vec<(usize, usize, String)> = todo
            .par_iter()
            .filter_map(|&i| {
                let path = &paths[i];
                let name = path.display().to_string();
                let result = crate::walk::read_regular(path)
                    .with_context(|| format!("cannot read image {name}"))
                    .and_then(|bytes| decode_checked(&bytes, &name, pre));
                result.err().map(|e| (d, i, format!("{e:#}")))
            })
            .collect();
        found.sort();
        failures.extend(found);
    }
    if failures.is_empty() {
        return Ok(BadImages::default());
    }
    if !skip_bad {
        let list: Vec<&str> = failures.iter().map(|f| f.2.as_str()).collect();
        bail!(
            "{} image(s) of --data {} cannot be used (pass --skip-bad to leave them out):\n  {}",
            failures.len(),
            dataset.root.display(),
            list.join("\n  ")
        );
    }
    let mut bad = BadImages::default();
    for (d, i, why) in failures {
        eprintln!("warning: skipping {why}");
        bad.samples.insert((d, i));
        bad.rel_paths
            .push(dataset.domains[d].samples[i].rel.clone());
    }
    Ok(bad)
}

impl BadImages {
    /// Takes the bad images out of every client's train/val/test lists.
    pub fn remove_from(&self, splits: &mut Splits) {
        for c in &mut splits.clients {
            let d = c.domain;
            for list in [&mut c.train, &mut c.val, &mut c.test, &mut c.files] {
                list.retain(|&i| !self.samples.contains(&(d, i)));
            }
        }
    }

    /// Before [`Self::remove_from`]: refuses splits that skipping would leave without data: a held-out domain with no test
    /// image (its accuracy would be reported as nothing) or a training client with no
    /// training image (it would upload its untrained start every round and dilute each
    /// average). Names the client and says how many of its images were unusable.
    pub fn check_left(&self, splits: &Splits) -> Result<()> {
        for c in &splits.clients {
            let (list, role) = match c.held_out {
                true => (&c.test, "held-out domain"),
                false => (&c.train, "training client"),
            };
            let bad = |i: &&usize| self.samples.contains(&(c.domain, **i));
            let left = list.iter().filter(|i| !bad(i)).count();
            let skipped = c.files.iter().filter(bad).count();
            if left == 0 && skipped > 0 {
                bail!(
                    "--skip-bad left {role} `{}` with no usable {} image ({skipped} of its \
                     images cannot be used); fix or replace them{}",
                    c.name,
                    if c.held_out { "test" } else { "training" },
                    if c.held_out {
                        ", or hold out another --test-domain"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(())
    }

    /// The paths of domain `d` to extract: all but the bad ones.
    pub fn usable_paths(&self, dataset: &Dataset, d: usize) -> Vec<PathBuf> {
        (dataset.domains[d].samples.iter().enumerate())
            .filter(|(i, _)| !self.samples.contains(&(d, *i)))
            .map(|(_, s)| s.path.clone())
            .collect()
    }

    /// Features of the usable paths of domain `d` spread back to one row per sample, zero rows
    /// at the bad ones (never read: they are out of every split).
    pub fn with_gaps(&self, dataset: &Dataset, d: usize, features: Vec<f32>) -> Vec<f32> {
        let n = dataset.domains[d].samples.len();
        let skipped = (0..n).filter(|i| self.samples.contains(&(d, *i))).count();
        if skipped == 0 {
            return features;
        }
        let dim = features.len() / (n - skipped).max(1);
        let mut rows = features.chunks_exact(dim.max(1));
        let mut full = Vec::with_capacity(n * dim);
        for i in 0..n {
            match self.samples.contains(&(d, i)) {
                true => full.extend(std::iter::repeat_n(0.0, dim)),
                false => full.extend_from_slice(rows.next().unwrap_or(&[])),
            }
        }
        full
    }
}

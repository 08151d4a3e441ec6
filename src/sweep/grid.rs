//! The sweep's grid: every (method, held-out domain, seed) cell in a fixed order, each
//! cell's run-directory name, and `--shard i/n`'s share of it.

use crate::federated::Method;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// What the sweep runs: each method × held-out domain × seed, in that nesting order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grid {
    pub methods: Vec<Method>,
    pub test_domains: Vec<String>,
    pub seeds: Vec<u32>,
}

/// One run of the grid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub method: Method,
    pub test_domain: String,
    pub seed: u32,
}

impl Cell {
    /// The cell's run directory inside the sweep directory: `<method>-<domain>-seed<seed>`.
    pub fn dir_name(&self) -> String {
        format!(
            "{}-{}-seed{}",
            self.method.name(),
            self.test_domain,
            self.seed
        )
    }
}

impl Grid {
    /// Every cell, methods outermost and seeds innermost (the order `run i of n` counts).
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &method in &self.methods {
            for domain in &self.test_domains {
                for &seed in &self.seeds {
                    cells.push(Cell {
                        method,
                        test_domain: domain.clone(),
                        seed,
                    });
                }
            }
        }
        cells
    }
}

/// `--shard i/n`: this process runs the cells whose place in [`Grid::cells`] is `i` modulo `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/n` with `0 <= i < n` (SLURM's `$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`
    /// for an `--array=0-<n-1>` job).
    pub fn parse(text: &str) -> Result<Shard> {
        let parsed = text
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        let Some((index, count)) = parsed else {
            bail!("--shard must be i/n (e.g. 0/3), got {text:?}");
        };
        if count == 0 {
            bail!("--shard {text}: the shard count must be at least 1");
        }
        if index >= count {
            bail!(
                "--shard {text}: the shard index must be below the count {count} (shards are \
                 numbered 0 to {})",
                count - 1
            );
        }
        Ok(Shard { index, count })
    }

    /// This shard's cells with their place in the whole grid (0-based).
    pub fn share(self, cells: Vec<Cell>) -> Vec<(usize, Cell)> {
        (cells.into_iter().enumerate())
            .filter(|(i, _)| i % self.count == self.index)
            .collect()
    }
}

/// `--methods a,b`: each a `fedclip run --method` name, none twice.
pub fn parse_methods(text: &str) -> Result<Vec<Method>> {
    use clap::ValueEnum;
    let mut methods = Vec::new();
    for name in list(text) {
        let Ok(method) = Method::from_str(name, false) else {
            let known: Vec<String> = Method::value_variants().iter().map(|m| m.name()).collect();
            bail!(
                "--methods: unknown method {name:?} (known: {})",
                known.join(", ")
            );
        };
        if methods.contains(&method) {
            bail!("--methods: {name} is given twice");
        }
        methods.push(method);
    }
    if methods.is_empty() {
        bail!("--methods: name at least one method, e.g. --methods fedclip,zeroshot");
    }
    Ok(methods)
}

/// `--seeds 0,1,2`: none twice (two cells would share a run directory).
pub fn parse_seeds(text: &str) -> Result<Vec<u32>> {
    let mut seeds = Vec::new();
    for s in list(text) {
        let Ok(seed) = s.parse::<u32>() else {
            bail!(
                "--seeds: {s:?} is not a seed (a whole number from 0 to {})",
                u32::MAX
            );
        };
        if seeds.contains(&seed) {
            bail!("--seeds: seed {seed} is given twice");
        }
        seeds.push(seed);
    }
    if seeds.is_empty() {
        bail!("--seeds: give at least one seed, e.g. --seeds 0,1,2");
    }
    Ok(seeds)
}

/// `--test-domains all|a,b` against the dataset's domain folders `available`.
pub fn parse_test_domains(text: &str, available: &[String], data: &str) -> Result<Vec<String>> {
    if text.trim() == "all" {
        return Ok(available.to_vec());
    }
    let mut domains: Vec<String> = Vec::new();
    for name in list(text) {
        if !available.iter().any(|d| d == name) {
            bail!(
                "--test-domains: unknown domain {name:?}: {data} has {}",
                available.join(", ")
            );
        }
        if domains.iter().any(|d| d == name) {
            bail!("--test-domains: {name} is given twice");
        }
        domains.push(name.to_string());
    }
    if domains.is_empty() {
        bail!("--test-domains: name at least one domain, or `all`");
    }
    Ok(domains)
}

/// The non-empty items of a comma-separated list.
fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_grid() {
        let grid = Grid {
            methods: vec![Method::Fedclip, Method::Zeroshot],
            test_domains: vec!["a".into(), "b".into(), "c".into()],
            seeds: vec![0, 1],
        };
        let cells = grid.cells();
        assert_eq!(cells.len(), 12);
        let mut seen: Vec<usize> = Vec::new();
        for i in 0..5 {
            let shard = Shard::parse(&format!("{i}/5")).unwrap();
            seen.extend(shard.share(cells.clone()).into_iter().map(|(k, _)| k));
        }
        seen.sort();
        assert_eq!(seen, (0..12).collect::<Vec<_>>());
        assert_eq!(cells[1].dir_name(), "fedclip-a-seed1");
        assert_eq!(cells[6].dir_name(), "zeroshot-a-seed0");
    }

    #[test]
    fn bad_lists_are_named() {
        let err = |r: Result<Vec<u32>>| r.unwrap_err().to_string();
        assert!(err(parse_seeds("0,1,0")).contains("seed 0 is given twice"));
        assert!(err(parse_seeds("0,x")).contains("\"x\" is not a seed"));
        let e = parse_methods("fedclip,nope").unwrap_err().to_string();
        assert!(
            e.contains("unknown method \"nope\"") && e.contains("zeroshot"),
            "{e}"
        );
        let e = Shard::parse("3/3").unwrap_err().to_string();
        assert!(e.contains("--shard 3/3") && e.contains("0 to 2"), "{e}");
        assert!(
            Shard::parse("1/0")
                .unwrap_err()
                .to_string()
                .contains("at least 1")
        );
        let avail = vec!["x".to_string(), "y".to_string()];
        let e = parse_test_domains("x,z", &avail, "d")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown domain \"z\"") && e.contains("x, y"),
            "{e}"
        );
        assert_eq!(parse_test_domains("all", &avail, "d").unwrap(), avail);
    }
}

//! Client splits: the FedCLIP reference protocol, fedclip's Dirichlet label-skew extension,
//! per-round client sampling, and the `splits.json` form.
//!
//! # The reference protocol (one client per domain)
//!
//! PersonalizedFL `fedclip/utils/prepare_data_dg_clip.py`, `getfeadataloader` (lines 67-96):
//! one client per domain, in the order of `args.domains`; a held-out domain
//! (`args.test_envs`) is wholly test data, in `ImageFolder` order. Every other domain is
//! split with the seed **re-set for each domain**:
//!
//! ```text
//! l = len(data); index = np.arange(l)
//! np.random.seed(args.seed); np.random.shuffle(index)
//! l1, l2, l3 = int(l*args.datapercent), int(l*0.2), int(l*0.2)     # datapercent = 0.6
//! train = index[:l1]; val = index[l1:l1+l2]; test = index[l1+l2:l1+l2+l3]
//! ```
//!
//! so the boundaries are truncated products and up to two files per domain (the rounding
//! remainder) are in no split. [`reference_split`] does exactly this, with
//! [`RandomState`] reproducing numpy's stream bit for bit.
//!
//! # Several clients per domain (not in the reference)
//!
//! With `clients_per_domain = K > 1`, each training domain is first partitioned among `K`
//! clients with Dirichlet label skew ([`dirichlet_partition`]), then each client's files (in
//! `ImageFolder` order) are split as above, again seeded with `seed`. Clients are named
//! `<domain>#<i>` (`i` from 0). A held-out domain stays one test-only client named after the
//! domain. The partition, per domain `d` and attempt `a = 0, 1, ...`:
//!
//! ```text
//! rs = np.random.RandomState([seed, 1, d, a])
//! for each class c in label order (members: its files in ImageFolder order, m of them):
//!     p = rs.dirichlet([alpha] * K);  perm = rs.permutation(m)
//!     cut_k = min(max(int(cumsum(p)[k] * m), cut_{k-1}), m) for k < K-1;  cut_{K-1} = m
//!     client k takes members[perm[cut_{k-1}:cut_k]]
//! accept when every client has >= min(min_client_files, n // K) files, else a += 1
//! ```
//!
//! (a draw with non-finite proportions, possible only for tiny `alpha`, is also rejected);
//! each client's list is then sorted back into `ImageFolder` order. tests/data.rs checks this
//! against a numpy implementation in tests/reference/make_split_fixtures.py.
//!
//! # Client sampling
//!
//! [`sample_clients`]: FedAvg's `m = max(⌊C·K⌋, 1)` clients of `K` per round (all when
//! `C >= 1`): the first `m` of `RandomState([seed, 2, round]).permutation(K)`, sorted.

use super::rng::RandomState;
use super::{Dataset, Preset};
use anyhow::{Context, Result, bail, ensure};
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// Stream tag of the Dirichlet partition (second word of its `init_by_array` key).
pub const TAG_PARTITION: u32 = 1;
/// Stream tag of the per-round client sampling.
pub const TAG_SAMPLE: u32 = 2;
/// Redraws of a Dirichlet partition before giving up on `min_client_files`.
pub const MAX_PARTITION_ATTEMPTS: u32 = 1000;
/// `format` field of a `splits.json`.
pub const SPLITS_FORMAT: &str = "fedclip-splits/1";

/// How the dataset is divided among clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SplitConfig {
    /// numpy seed (`0..=2**32-1`, as `np.random.seed` accepts); the reference's `--seed`.
    pub seed: u32,
    /// Train share of each client; the reference's `--datapercent` (0.6). Validation and
    /// test get `int(n * 0.2)` each.
    pub train_fraction: f64,
    /// Held-out domains (the reference's `--test_envs`, by name): test data only.
    pub test_domains: Vec<String>,
    /// Clients per training domain; 1 is the reference protocol.
    pub clients_per_domain: usize,
    /// Dirichlet concentration of the label skew (used when `clients_per_domain > 1`):
    /// small is skewed, large is near-IID.
    pub dirichlet_alpha: f64,
    /// Each client of a partitioned domain gets at least `min(this, n / clients)` files.
    pub min_client_files: usize,
    /// The Dirichlet partition's key `d` of each domain (empty: its index). A silo holding
    /// some of a federation's domains passes their indices among all, so that its clients
    /// are the ones `fedclip run` makes of the whole dataset.
    pub partition_keys: Vec<u32>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            seed: 0,
            train_fraction: 0.6,
            test_domains: Vec::new(),
            clients_per_domain: 1,
            dirichlet_alpha: 0.5,
            min_client_files: 10,
            partition_keys: Vec::new(),
        }
    }
}

/// One client. Index lists point into `dataset.domains[domain].samples`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The domain name with one client per domain (and for held-out domains), else
    /// `<domain>#<i>`.
    pub name: String,
    pub domain: usize,
    /// A held-out domain: `train` and `val` are empty, `test` is every file.
    pub held_out: bool,
    /// Every file assigned to the client, in `ImageFolder` order (train, val and test plus
    /// the at most two that the split's rounding leaves out).
    pub files: Vec<usize>,
    /// In split order (the shuffled order).
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// All clients of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    pub config: SplitConfig,
    /// Domain order; within a domain, client order.
    pub clients: Vec<Client>,
}

/// `np.random.seed(seed); idx = np.arange(n); np.random.shuffle(idx)`.
pub fn numpy_permutation(seed: u32, n: usize) -> Vec<usize> {
    RandomState::new(seed).permutation(n)
}

/// The reference split of `n` files: `(train, val, test)` positions in `0..n`.
pub fn reference_split(
    n: usize,
    seed: u32,
    train_fraction: f64,
) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let idx = numpy_permutation(seed, n);
    // Python's int() of the float products; slices clamp at the end like numpy's.
    let l1 = (n as f64 * train_fraction) as usize;
    let l2 = (n as f64 * 0.2) as usize;
    let a = l1.min(n);
    let b = (l1 + l2).min(n);
    let c = (l1 + 2 * l2).min(n);
    (idx[..a].to_vec(), idx[a..b].to_vec(), idx[b..c].to_vec())
}

/// Most clients one domain may be split among: the partition draws and keeps a value per
/// client and class, so 10^9 clients would ask for gigabytes (a run has far fewer images
/// than this per domain; clients beyond its files are empty).
pub const MAX_CLIENTS_PER_DOMAIN: usize = 100_000;

/// Partitions one domain's files among `clients` with Dirichlet(`alpha`) label skew (see
/// the module docs for the exact procedure). `labels[i]` is file `i`'s class; returns each
/// client's file positions in increasing order. Every file goes to exactly one client.
pub fn dirichlet_partition(
    labels: &[usize],
    num_classes: usize,
    clients: usize,
    alpha: f64,
    seed: u32,
    domain: u32,
    min_client_files: usize,
) -> Result<Vec<Vec<usize>>> {
    ensure!(clients >= 1, "clients per domain must be at least 1");
    ensure!(
        clients <= MAX_CLIENTS_PER_DOMAIN,
        "clients per domain must be at most {MAX_CLIENTS_PER_DOMAIN}, got {clients}"
    );
    ensure!(
        alpha.is_finite() && alpha > 0.0,
        "the Dirichlet alpha must be a positive number, got {alpha}"
    );
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        ensure!(
            l < num_classes,
            "label {l} of file {i} is not below {num_classes}"
        );
        members[l].push(i);
    }
    let need = min_client_files.min(labels.len() / clients);
    let alphas = vec![alpha; clients];
    for attempt in 0..MAX_PARTITION_ATTEMPTS {
        let mut rs = RandomState::from_key(&[seed, TAG_PARTITION, domain, attempt]);
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); clients];
        let mut finite = true;
        for class in &members {
            let m = class.len();
            let p = rs.dirichlet(&alphas);
            let perm = rs.permutation(m);
            if p.iter().any(|v| !v.is_finite()) {
                finite = false;
                break;
            }
            let (mut cum, mut start) = (0.0f64, 0usize);
            for (k, part) in parts.iter_mut().enumerate() {
                cum += p[k];
                let end = if k == clients - 1 {
                    m
                } else {
                    ((cum * m as f64) as usize).max(start).min(m)
                };
                part.extend(perm[start..end].iter().map(|&j| class[j]));
                start = end;
            }
        }
        if finite && parts.iter().all(|p| p.len() >= need) {
            for p in &mut parts {
                p.sort_unstable();
            }
            return Ok(parts);
        }
    }
    bail!(
        "no Dirichlet(alpha = {alpha}) partition of {} files among {clients} clients gives each \
         at least {need} files in {MAX_PARTITION_ATTEMPTS} draws; raise alpha or lower the \
         minimum",
        labels.len()
    )
}

/// The clients (indices into `0..n`) taking part in `round`: `max(⌊fraction·n⌋, 1)` of them
/// (all when `fraction >= 1`), sorted; reproducible from `(seed, round)`.
/// Refuses a client sample fraction outside (0, 1] (negative, zero, NaN, above 1), which
/// [`sample_clients`] would otherwise quietly read as "everyone" or "one".
pub fn check_fraction(fraction: f64) -> Result<()> {
    ensure!(
        fraction > 0.0 && fraction <= 1.0,
        "sample fraction must be in (0, 1], got {fraction}"
    );
    Ok(())
}

pub fn sample_clients(n: usize, fraction: f64, seed: u32, round: u32) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    if fraction >= 1.0 || fraction.is_nan() {
        return (0..n).collect();
    }
    let m = ((fraction * n as f64 + 1e-9).floor() as usize).clamp(1, n);
    let mut chosen = RandomState::from_key(&[seed, TAG_SAMPLE, round]).permutation(n);
    chosen.truncate(m);
    chosen.sort_unstable();
    chosen
}

/// Divides `dataset` among clients as `config` says.
pub fn make_splits(dataset: &Dataset, config: &SplitConfig) -> Result<Splits> {
    ensure!(
        config.train_fraction > 0.0 && config.train_fraction <= 1.0,
        "train fraction must be in (0, 1], got {}",
        config.train_fraction
    );
    ensure!(
        config.clients_per_domain >= 1,
        "clients per domain must be at least 1"
    );
    let mut held_out = vec![false; dataset.domains.len()];
    for name in &config.test_domains {
        held_out[dataset.domain_index(name).context("--test-domain")?] = true;
    }
    ensure!(
        held_out.iter().any(|h| !h),
        "every domain of {} is a test domain; at least one must train",
        dataset.root.display()
    );
    let keys = &config.partition_keys;
    ensure!(
        keys.is_empty() || keys.len() == dataset.domains.len(),
        "{} partition keys for {} domains",
        keys.len(),
        dataset.domains.len()
    );
    let mut clients = Vec::new();
    for (d, domain) in dataset.domains.iter().enumerate() {
        let n = domain.samples.len();
        if held_out[d] {
            clients.push(Client {
                name: domain.name.clone(),
                domain: d,
                held_out: true,
                files: (0..n).collect(),
                train: Vec::new(),
                val: Vec::new(),
                test: (0..n).collect(),
            });
            continue;
        }
        let parts = if config.clients_per_domain == 1 {
            vec![(0..n).collect::<Vec<_>>()]
        } else {
            dirichlet_partition(
                &domain.labels(),
                dataset.classes.len(),
                config.clients_per_domain,
                config.dirichlet_alpha,
                config.seed,
                keys.get(d).copied().unwrap_or(d as u32),
                config.min_client_files,
            )
            .with_context(|| format!("partitioning domain `{}`", domain.name))?
        };
        for (i, files) in parts.into_iter().enumerate() {
            let (tr, va, te) = reference_split(files.len(), config.seed, config.train_fraction);
            let map = |v: Vec<usize>| v.into_iter().map(|j| files[j]).collect::<Vec<_>>();
            let name = if config.clients_per_domain == 1 {
                domain.name.clone()
            } else {
                format!("{}#{i}", domain.name)
            };
            clients.push(Client {
                name,
                domain: d,
                held_out: false,
                train: map(tr),
                val: map(va),
                test: map(te),
                files,
            });
        }
    }
    Ok(Splits {
        config: config.clone(),
        clients,
    })
}

impl Splits {
    /// Refuses a partition that leaves a training client without training files, naming
    /// the domain, its file count and the client count; with `drop`, leaves such clients
    /// out and returns a warning per domain instead.
    pub fn check_training_data(&mut self, dataset: &Dataset, drop: bool) -> Result<Vec<String>> {
        let mut messages = Vec::new();
        for (d, domain) in dataset.domains.iter().enumerate() {
            let of_domain = || self.clients.iter().filter(|c| c.domain == d && !c.held_out);
            let empty = of_domain().filter(|c| c.train.is_empty()).count();
            if empty > 0 {
                messages.push(format!(
                    "--clients-per-domain {}: domain `{}` ({} files) split among {} clients \
                     leaves {empty} of them without training files",
                    self.config.clients_per_domain,
                    domain.name,
                    domain.samples.len(),
                    of_domain().count()
                ));
            }
        }
        if messages.is_empty() {
            return Ok(messages);
        }
        if !drop {
            bail!(
                "{}; use fewer clients, or pass --drop-empty-clients to leave them out",
                messages.join("; ")
            );
        }
        self.clients.retain(|c| c.held_out || !c.train.is_empty());
        Ok(messages
            .into_iter()
            .map(|m| format!("{m}; those clients are left out (--drop-empty-clients)"))
            .collect())
    }

    /// Indices (into `clients`) of the clients that train.
    pub fn training_clients(&self) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|&i| !self.clients[i].held_out)
            .collect()
    }

    /// Indices of the held-out (test-only) clients.
    pub fn held_out_clients(&self) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|&i| self.clients[i].held_out)
            .collect()
    }

    pub fn client(&self, name: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.name == name)
    }

    /// The training clients (indices into `clients`) taking part in `round`, sampled with
    /// [`sample_clients`] under `config.seed`.
    pub fn sample_round(&self, fraction: f64, round: u32) -> Vec<usize> {
        let train = self.training_clients();
        sample_clients(train.len(), fraction, self.config.seed, round)
            .into_iter()
            .map(|i| train[i])
            .collect()
    }

    /// The serializable form: file paths relative to the dataset root.
    pub fn to_file(&self, dataset: &Dataset) -> SplitsFile {
        let clients = self
            .clients
            .iter()
            .map(|c| {
                let samples = &dataset.domains[c.domain].samples;
                let rel = |v: &[usize]| v.iter().map(|&i| samples[i].rel.clone()).collect();
                let mut used = vec![false; samples.len()];
                for &i in c.train.iter().chain(&c.val).chain(&c.test) {
                    used[i] = true;
                }
                let unused: Vec<usize> = c.files.iter().copied().filter(|&i| !used[i]).collect();
                let files = ClientFiles {
                    domain: dataset.domains[c.domain].name.clone(),
                    held_out: c.held_out,
                    train: rel(&c.train),
                    val: rel(&c.val),
                    test: rel(&c.test),
                    unused: rel(&unused),
                };
                (c.name.clone(), files)
            })
            .collect();
        SplitsFile {
            format: SPLITS_FORMAT.to_string(),
            root: dataset.root.display().to_string(),
            preset: dataset.preset,
            classes: dataset.classes.clone(),
            config: self.config.clone(),
            clients: ClientMap(clients),
        }
    }

    /// Writes `splits.json` atomically (a temporary file renamed into place).
    pub fn write_json(&self, dataset: &Dataset, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_file(dataset))? + "\n";
        crate::io::write_atomic(path, text.as_bytes())
    }

    /// Rebuilds splits from their file form against a scan of the same data: every listed
    /// file must be in `dataset`, under the client's domain.
    pub fn from_file(file: &SplitsFile, dataset: &Dataset) -> Result<Splits> {
        ensure!(
            file.format == SPLITS_FORMAT,
            "unsupported splits format `{}` (expected `{SPLITS_FORMAT}`)",
            file.format
        );
        ensure!(
            file.classes == dataset.classes,
            "the splits' classes ({}) differ from those of {} ({})",
            file.classes.join(", "),
            dataset.root.display(),
            dataset.classes.join(", ")
        );
        let mut clients = Vec::new();
        for (name, cf) in &file.clients.0 {
            let d = dataset
                .domain_index(&cf.domain)
                .with_context(|| format!("client `{name}`"))?;
            let index: HashMap<&str, usize> = dataset.domains[d]
                .samples
                .iter()
                .enumerate()
                .map(|(i, s)| (s.rel.as_str(), i))
                .collect();
            let resolve = |list: &[String]| -> Result<Vec<usize>> {
                list.iter()
                    .map(|r| {
                        index.get(r.as_str()).copied().with_context(|| {
                            format!(
                                "client `{name}`: {} is not an image of domain `{}` in {}",
                                r,
                                cf.domain,
                                dataset.root.display()
                            )
                        })
                    })
                    .collect()
            };
            let (train, val, test) = (resolve(&cf.train)?, resolve(&cf.val)?, resolve(&cf.test)?);
            let mut files: Vec<usize> = train
                .iter()
                .chain(&val)
                .chain(&test)
                .copied()
                .chain(resolve(&cf.unused)?)
                .collect();
            files.sort_unstable();
            let before = files.len();
            files.dedup();
            ensure!(
                files.len() == before,
                "client `{name}`: a file is listed twice"
            );
            clients.push(Client {
                name: name.clone(),
                domain: d,
                held_out: cf.held_out,
                files,
                train,
                val,
                test,
            });
        }
        Ok(Splits {
            config: file.config.clone(),
            clients,
        })
    }

    /// Reads a `splits.json` written by [`write_json`](Self::write_json).
    pub fn read_json(path: &Path, dataset: &Dataset) -> Result<Splits> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: SplitsFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid splits file", path.display()))?;
        Self::from_file(&file, dataset).with_context(|| format!("in {}", path.display()))
    }
}

/// `splits.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitsFile {
    pub format: String,
    /// The dataset root as given when the splits were made (informational).
    pub root: String,
    pub preset: Option<Preset>,
    pub classes: Vec<String>,
    pub config: SplitConfig,
    /// Keyed by client name, in client order.
    pub clients: ClientMap,
}

/// One client's files, relative to the dataset root, in split order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFiles {
    pub domain: String,
    pub held_out: bool,
    pub train: Vec<String>,
    pub val: Vec<String>,
    pub test: Vec<String>,
    /// Files of the client in no split (the reference's rounding remainder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unused: Vec<String>,
}

/// Client name → files, serialized as a JSON object that keeps client order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientMap(pub Vec<(String, ClientFiles)>);

impl Serialize for ClientMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ClientMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ClientMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of client name to files")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<ClientMap, A::Error> {
                let mut out: Vec<(String, ClientFiles)> = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, ClientFiles>()? {
                    if out.iter().any(|(n, _)| *n == k) {
                        return Err(serde::de::Error::custom(format!(
                            "client `{k}` is listed twice"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(ClientMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

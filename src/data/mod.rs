//! Domain-generalisation datasets laid out as `<root>/<domain>/<class>/<image>`, the splits
//! of the FedCLIP protocol, and fedclip's label-skew extension of it.
//!
//! * [`Dataset::scan`] lists every domain as torchvision's `ImageFolder` would (the FedCLIP
//!   reference builds one `ImageFolder` per domain): classes are the sorted sub-folder
//!   names; a class's files are found with `sorted(os.walk(class_dir, followlinks=True))`
//!   and `sorted(fnames)`, kept when the lower-cased name ends with one of
//!   [`IMG_EXTENSIONS`]. Every domain must have the same class set (label indices must agree
//!   across clients), and every class folder at least one image.
//! * [`Preset`]: PACS, VLCS, Office-Home and DomainNet, recognised from the domain folders.
//! * [`split`]: the reference 60/20/20 split per domain, Dirichlet label-skew clients,
//!   per-round client sampling and the `splits.json` form.
//! * [`rng`]: numpy's legacy MT19937 stream, bit-identical, which the splits need.

mod preset;
pub mod rng;
pub mod split;

pub use preset::Preset;

pub use split::{
    Client, ClientFiles, SplitConfig, Splits, SplitsFile, dirichlet_partition, make_splits,
    numpy_permutation, reference_split, sample_clients,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// torchvision's `IMG_EXTENSIONS`, matched against the lower-cased file name.
pub const IMG_EXTENSIONS: &[&str] = &[
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];

/// The extensions whose files fedclip decodes (JPEG and PNG, by their signature). The scan
/// still lists every [`IMG_EXTENSIONS`] file, as `ImageFolder` does, so that the splits stay
/// the reference's; [`Dataset::check_formats`] then refuses a dataset holding others.
pub const DECODED_EXTENSIONS: &[&str] = &[".jpg", ".jpeg", ".png"];

/// The FedCLIP reference's prompt, `prompt + ' ' + class` with `prompt = 'a picture of a'`.
pub const DEFAULT_PROMPT_TEMPLATE: &str = "a picture of a {}";

/// Whether `ImageFolder` takes a file of this name.
pub fn is_image_file(name: &str) -> bool {
    let lower = name.to_lowercase();
    IMG_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// One image of a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// `root` joined with `rel`.
    pub path: PathBuf,
    /// Path relative to the dataset root, `/`-separated: `<domain>/<class>/.../<file>`.
    pub rel: String,
    /// Class index into [`Dataset::classes`].
    pub label: usize,
}

/// One domain: its samples in `ImageFolder` order (by class, then by path).
#[derive(Clone, Debug)]
pub struct Domain {
    pub name: String,
    pub dir: PathBuf,
    pub samples: Vec<Sample>,
}

impl Domain {
    pub fn paths(&self) -> Vec<PathBuf> {
        self.samples.iter().map(|s| s.path.clone()).collect()
    }

    pub fn labels(&self) -> Vec<usize> {
        self.samples.iter().map(|s| s.label).collect()
    }
}

/// A scanned dataset.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    /// The benchmark recognised from the domain folders (or asked for), if any.
    pub preset: Option<Preset>,
    /// Sorted class folder names, the same in every domain.
    pub classes: Vec<String>,
    /// Domains in sorted folder-name order (a preset's order; the same thing).
    pub domains: Vec<Domain>,
    /// Non-fatal findings, e.g. a preset with a class count other than the full benchmark's
    /// (a subset such as mini-DomainNet). The caller prints them (once).
    pub warnings: Vec<String>,
}

impl Dataset {
    /// Scans `root`, detecting a [`Preset`] from its domain folders. Every sub-folder of
    /// `root` not starting with `.` is a domain.
    pub fn scan(root: &Path) -> Result<Dataset> {
        Self::scan_with(root, None)
    }

    /// Scans `root`. With `preset`, exactly its domains are used (each must exist; other
    /// folders are ignored with a warning); without, the preset is detected.
    pub fn scan_with(root: &Path, preset: Option<Preset>) -> Result<Dataset> {
        let mut warnings = Vec::new();
        let found = Self::domain_folders(root)?;
        let (preset, names) = match preset {
            Some(p) => (Some(p), preset_domains(root, p, &found, &mut warnings)?),
            None => (Preset::detect(&found), found),
        };
        let mut domains = Vec::new();
        let mut class_sets: Vec<Vec<String>> = Vec::new();
        for name in &names {
            let dir = root.join(name);
            let (classes, samples) = scan_image_folder(&dir, name, root, &mut warnings)?;
            class_sets.push(classes);
            domains.push(Domain {
                name: name.clone(),
                dir,
                samples,
            });
        }
        check_same_classes(&domains, &class_sets)?;
        let classes = class_sets.swap_remove(0);
        if let Some(p) = preset {
            warnings.extend(preset_class_warning(root, p, &classes));
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            preset,
            classes,
            domains,
            warnings,
        })
    }

    /// Refuses a dataset with files `ImageFolder` lists but fedclip does not decode (BMP,
    /// TIFF, WebP, PPM/PGM): leaving them out would silently change the splits.
    pub fn check_formats(&self) -> Result<()> {
        let unread: Vec<&str> = self
            .domains
            .iter()
            .flat_map(|d| &d.samples)
            .map(|s| s.rel.as_str())
            .filter(|rel| {
                let lower = rel.to_lowercase();
                !DECODED_EXTENSIONS.iter().any(|e| lower.ends_with(e))
            })
            .collect();
        if let Some(first) = unread.first() {
            bail!(
                "--data {}: {} image file(s) in formats fedclip does not decode (only JPEG and \
                 PNG are read), e.g. {first}; convert them to PNG or move them out of the dataset",
                self.root.display(),
                unread.len()
            );
        }
        Ok(())
    }

    /// The sorted sub-folders of `root` not starting with `.`, without scanning them: the
    /// domains [`scan`](Self::scan) would take. An error when there are none.
    pub fn domain_folders(root: &Path) -> Result<Vec<String>> {
        if !root.exists() {
            let msg = format!("dataset root {} does not exist", root.display());
            // An I/O error in the chain, so that callers (the Python module) can tell.
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, msg).into());
        }
        if !root.is_dir() {
            bail!("dataset root {} is not a directory", root.display());
        }
        let found = sorted_subdirs(root)?
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect::<Vec<_>>();
        if found.is_empty() {
            bail!(
                "dataset root {} has no domain folders (expected <root>/<domain>/<class>/<image>)",
                root.display()
            );
        }
        Ok(found)
    }

    pub fn domain_names(&self) -> Vec<&str> {
        self.domains.iter().map(|d| d.name.as_str()).collect()
    }

    /// The index of a domain by name; an unknown name is an error listing the valid ones.
    pub fn domain_index(&self, name: &str) -> Result<usize> {
        self.domains
            .iter()
            .position(|d| d.name == name)
            .with_context(|| {
                format!(
                    "unknown domain `{name}` in {}; valid domains: {}",
                    self.root.display(),
                    self.domain_names().join(", ")
                )
            })
    }

    /// Total number of images over all domains.
    pub fn num_files(&self) -> usize {
        self.domains.iter().map(|d| d.samples.len()).sum()
    }

    /// One prompt per class, in label order.
    pub fn prompts(&self, template: &PromptTemplate) -> Vec<String> {
        self.classes.iter().map(|c| template.render(c)).collect()
    }

    /// Refuses class folders that render the same prompt (`dog` and `Dog`, `sea_lion` and
    /// `sea lion`): their text features would be equal, so one of them could never be
    /// predicted. The message names both folders and the prompt.
    pub fn check_distinct_prompts(&self, template: &PromptTemplate) -> Result<()> {
        let mut first: std::collections::HashMap<String, &str> = Default::default();
        for (class, prompt) in self.classes.iter().zip(self.prompts(template)) {
            if let Some(other) = first.insert(prompt.clone(), class) {
                bail!(
                    "class folders {other:?} and {class:?} both become the prompt {prompt:?}, \
                     so one of them could never be predicted; rename or merge one of them"
                );
            }
        }
        Ok(())
    }
}

/// How a class name becomes a prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTemplate {
    /// Text with one `{}` where the class name goes (appended after a space if absent).
    pub template: String,
    /// Replace `_` by a space and lower-case the class name first (`Alarm_Clock` →
    /// `alarm clock`). The reference inserts the folder name verbatim; for PACS the two
    /// agree.
    pub clean_names: bool,
}

impl Default for PromptTemplate {
    fn default() -> Self {
        PromptTemplate {
            template: DEFAULT_PROMPT_TEMPLATE.to_string(),
            clean_names: true,
        }
    }
}

impl PromptTemplate {
    pub fn new(template: &str) -> Self {
        PromptTemplate {
            template: template.to_string(),
            clean_names: true,
        }
    }

    pub fn render(&self, class: &str) -> String {
        let name = if self.clean_names {
            class.replace('_', " ").to_lowercase()
        } else {
            class.to_string()
        };
        if self.template.contains("{}") {
            self.template.replacen("{}", &name, 1)
        } else {
            format!("{} {name}", self.template)
        }
    }
}

/// Sorted names of the sub-directories of `dir` (symlinks followed, as `os.scandir`'s
/// `is_dir()` does).
fn sorted_subdirs(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        if is_dir_entry(&entry)? {
            names.push(utf8_name(&entry.file_name(), &path)?);
        }
    }
    names.sort();
    Ok(names)
}

/// `DirEntry.is_dir()` as Python has it: symlinks are followed (a broken one is no
/// directory); without a `stat` call for plain files.
fn is_dir_entry(entry: &std::fs::DirEntry) -> Result<bool> {
    let ty = entry
        .file_type()
        .with_context(|| format!("cannot stat {}", entry.path().display()))?;
    Ok(if ty.is_symlink() {
        entry.path().is_dir()
    } else {
        ty.is_dir()
    })
}

fn utf8_name(name: &std::ffi::OsStr, path: &Path) -> Result<String> {
    name.to_str().map(str::to_string).with_context(|| {
        format!(
            "--data: the file name {:?} is not valid UTF-8 (it could not be recorded in \
                 splits.json); rename it",
            path.as_os_str()
        )
    })
}

/// One domain as torchvision's `ImageFolder(dir)`: sorted class folders, each walked with
/// `sorted(os.walk(..., followlinks=True))` and sorted file names, through the shared
/// [`walk`](crate::walk) (regular files only, each directory read once: where `os.walk`
/// would loop for ever or list a linked folder twice, a warning is added to `warnings`).
fn scan_image_folder(
    dir: &Path,
    domain: &str,
    root: &Path,
    warnings: &mut Vec<String>,
) -> Result<(Vec<String>, Vec<Sample>)> {
    let classes = sorted_subdirs(dir)?;
    if classes.is_empty() {
        bail!(
            "domain {} has no class folders (expected <domain>/<class>/<image>)",
            dir.display()
        );
    }
    let mut samples = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = dir.join(class);
        let walk = crate::walk::regular_files(&class_dir, "--data", is_image_file)?;
        warnings.extend(walk.warnings);
        // os.walk yields (dirpath, dirnames, filenames); sorting those tuples sorts by
        // dirpath, i.e. by the path string (code-point order = UTF-8 byte order), then
        // each directory's files by name.
        let mut files = walk.files;
        if files.is_empty() {
            bail!(
                "class folder {} has no images (extensions {})",
                class_dir.display(),
                IMG_EXTENSIONS.join(" ")
            );
        }
        files.sort();
        for f in files {
            let rel = format!("{domain}/{class}/{}", f.rel());
            samples.push(Sample {
                path: root.join(&rel),
                rel,
                label,
            });
        }
    }
    Ok((classes, samples))
}

/// A named preset's domain folders among those `found` (a space may stand for the preset's
/// underscore): an error naming any that are missing, a warning for folders it ignores.
fn preset_domains(
    root: &Path,
    p: Preset,
    found: &[String],
    warnings: &mut Vec<String>,
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut missing = Vec::new();
    for want in p.domains() {
        let alt = want.replace('_', " ");
        if found.iter().any(|f| f == want) {
            names.push(want.to_string());
        } else if found.contains(&alt) {
            names.push(alt);
        } else {
            missing.push(*want);
        }
    }
    if !missing.is_empty() {
        bail!(
            "dataset root {}: {} domain folder(s) {} missing (found: {})",
            root.display(),
            p.display_name(),
            missing.join(", "),
            found.join(", ")
        );
    }
    let extra: Vec<&str> = found
        .iter()
        .filter(|f| !names.contains(f))
        .map(String::as_str)
        .collect();
    if !extra.is_empty() {
        warnings.push(format!(
            "{}: ignoring folder(s) {} that are not {} domains",
            root.display(),
            extra.join(", "),
            p.display_name()
        ));
    }
    Ok(names)
}

/// Every domain has the same class folders, so that labels agree: else an error naming a
/// domain, what it lacks and a domain that has it.
fn check_same_classes(domains: &[Domain], class_sets: &[Vec<String>]) -> Result<()> {
    let union: BTreeSet<&String> = class_sets.iter().flatten().collect();
    for (d, classes) in domains.iter().zip(class_sets) {
        let missing: Vec<&str> = union
            .iter()
            .filter(|c| !classes.contains(c))
            .map(|c| c.as_str())
            .collect();
        if !missing.is_empty() {
            let other = domains
                .iter()
                .zip(class_sets)
                .find(|(_, cs)| cs.iter().any(|c| c == missing[0]))
                .map(|(o, _)| o.name.as_str())
                .unwrap_or("?");
            bail!(
                "domain {} lacks class folder(s) {} (present in domain `{other}`); every \
                 domain must have the same classes so that labels agree",
                d.dir.display(),
                missing.join(", ")
            );
        }
    }
    Ok(())
}

/// A warning when a dataset that looks like preset `p` has another number of classes (a
/// subset?) or class folders that are not the preset's.
fn preset_class_warning(root: &Path, p: Preset, classes: &[String]) -> Option<String> {
    if classes.len() != p.num_classes() {
        return Some(format!(
            "{}: looks like {} by its domains but has {} classes, not {} (a subset?)",
            root.display(),
            p.display_name(),
            classes.len(),
            p.num_classes()
        ));
    }
    let unknown: Vec<&str> = classes
        .iter()
        .filter(|c| !p.classes().contains(&c.as_str()))
        .map(String::as_str)
        .collect();
    (!unknown.is_empty()).then(|| {
        format!(
            "{}: class folder(s) {} are not {}'s (label order follows the folders)",
            root.display(),
            unknown
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
            p.display_name()
        )
    })
}

//! Class-named folders of image files, as a folder or a (gzip-compressed) tar archive:
//! `[prefix/]{train,test}/<class>/<name>.{jpg,jpeg,png}` — the layout of the CIFAR-10 JPEG
//! archive in `shared/data`.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, ImageSet};

/// The train and test splits of an image-folder dataset.
#[derive(Debug, Clone)]
pub struct FolderSplits {
    /// `train/<class>/*`.
    pub train: ImageSet,
    /// `test/<class>/*`.
    pub test: ImageSet,
}

/// One decoded image: split, class name, entry name (for sorting), RGB bytes as channel planes.
struct Entry {
    train: bool,
    class: String,
    name: String,
    size: (u32, u32),
    planes: Vec<u8>,
}

fn split_of(path: &Path) -> Option<(bool, String, String)> {
    let parts: Vec<&str> = path
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect();
    let n = parts.len();
    if n < 3 {
        return None;
    }
    let ext = Path::new(parts[n - 1])
        .extension()?
        .to_str()?
        .to_ascii_lowercase();
    if !matches!(ext.as_str(), "jpg" | "jpeg" | "png") {
        return None;
    }
    let train = match parts[n - 3] {
        "train" => true,
        "test" => false,
        _ => return None,
    };
    Some((train, parts[n - 2].to_string(), parts[n - 1].to_string()))
}

/// Decodes the image `bytes` found at `place` (split, class, name, from [`split_of`]); errors
/// name `origin` and the entry as `shown`.
fn decode(
    origin: &Path,
    shown: &str,
    (train, class, name): (bool, String, String),
    bytes: &[u8],
) -> Result<Entry, DataError> {
    let image = image::load_from_memory(bytes)
        .map_err(|e| DataError::format(origin, format!("{shown}: cannot decode image: {e}")))?
        .to_rgb8();
    let (w, h) = image.dimensions();
    let plane = (w * h) as usize;
    let mut planes = vec![0u8; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            planes[c * plane + i] = pixel.0[c];
        }
    }
    Ok(Entry {
        train,
        class,
        name,
        size: (w, h),
        planes,
    })
}

/// Reads a folder or a `.tar`, `.tar.gz` / `.tgz` archive of class-named image folders.
/// Classes are the sorted folder names (CIFAR-10's label order is alphabetical); both splits
/// must have the same classes and every image the same size. Images are read in name order.
pub fn read_image_folders(path: &Path) -> Result<FolderSplits, DataError> {
    let mut entries = Vec::new();
    if path.is_dir() {
        read_dir_tree(path, path, &mut entries)?;
    } else if path.is_file() {
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let name = path.to_string_lossy().to_ascii_lowercase();
        let reader: Box<dyn Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut archive = tar::Archive::new(reader);
        let bad = |e: std::io::Error| DataError::format(path, format!("corrupt archive: {e}"));
        for item in archive.entries().map_err(bad)? {
            let mut item = item.map_err(bad)?;
            let entry_path = item.path().map_err(bad)?.into_owned();
            let Some(place) = split_of(&entry_path) else {
                continue;
            };
            let mut bytes = Vec::with_capacity(item.size() as usize);
            item.read_to_end(&mut bytes).map_err(bad)?;
            entries.push(decode(path, &entry_path.to_string_lossy(), place, &bytes)?);
        }
    } else {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            what: "image-folder dataset (folder or archive)".into(),
        });
    }
    assemble(path, entries)
}

fn read_dir_tree(root: &Path, dir: &Path, entries: &mut Vec<Entry>) -> Result<(), DataError> {
    let listing = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for item in listing {
        let item = item.map_err(|e| DataError::io(dir, e))?;
        let path = item.path();
        if path.is_dir() {
            read_dir_tree(root, &path, entries)?;
        } else if let Some(place) = split_of(path.strip_prefix(root).unwrap_or(&path)) {
            let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
            let shown = place.2.clone();
            entries.push(decode(&path, &shown, place, &bytes)?);
        }
    }
    Ok(())
}

fn assemble(origin: &Path, mut entries: Vec<Entry>) -> Result<FolderSplits, DataError> {
    let Some(first) = entries.first() else {
        return Err(DataError::format(
            origin,
            "no images found under train/<class>/ or test/<class>/ (expected .jpg, .jpeg or .png files)",
        ));
    };
    let size = first.size;
    if let Some(odd) = entries.iter().find(|e| e.size != size) {
        return Err(DataError::format(
            origin,
            format!(
                "{}/{}: image of {}×{} where the others are {}×{}",
                odd.class, odd.name, odd.size.0, odd.size.1, size.0, size.1
            ),
        ));
    }
    let classes_of = |train: bool| -> Vec<String> {
        let mut c: Vec<String> = entries
            .iter()
            .filter(|e| e.train == train)
            .map(|e| e.class.clone())
            .collect();
        c.sort();
        c.dedup();
        c
    };
    let (train_classes, test_classes) = (classes_of(true), classes_of(false));
    if train_classes.is_empty() || test_classes.is_empty() {
        return Err(DataError::format(
            origin,
            format!(
                "needs both a train/ and a test/ split (found {} training and {} test images)",
                entries.iter().filter(|e| e.train).count(),
                entries.iter().filter(|e| !e.train).count()
            ),
        ));
    }
    if train_classes != test_classes {
        return Err(DataError::format(
            origin,
            format!(
                "the splits have different classes: train {train_classes:?}, test {test_classes:?}"
            ),
        ));
    }
    if train_classes.len() > 256 {
        return Err(DataError::format(
            origin,
            format!("{} classes (at most 256)", train_classes.len()),
        ));
    }
    let index: BTreeMap<&str, u8> = train_classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u8))
        .collect();
    entries.sort_by(|a, b| (a.train, &a.class, &a.name).cmp(&(b.train, &b.class, &b.name)));
    let build = |train: bool| -> Result<ImageSet, DataError> {
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for e in entries.iter().filter(|e| e.train == train) {
            labels.push(index[e.class.as_str()]);
            pixels.extend_from_slice(&e.planes);
        }
        let split = PathBuf::from(origin).join(if train { "train" } else { "test" });
        ImageSet::new(
            &split,
            [3, size.1 as usize, size.0 as usize],
            pixels,
            labels,
            train_classes.clone(),
        )
    };
    Ok(FolderSplits {
        train: build(true)?,
        test: build(false)?,
    })
}

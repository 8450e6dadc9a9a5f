//! The dataset readers on generated files in the exact formats, well-formed and malformed.
mod common;

use common::{gz, idx_images, idx_labels, temp_dir};
use std::path::{Path, PathBuf};

use deq_train::data::{
    Augment, CIFAR_RECORD, DataError, DatasetKind, ImageBatcher, ImageDataset, load_splits,
    read_cifar_batches, read_idx_pair, read_image_folders,
};

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// A Fashion-MNIST-like folder: `train` with 12 images, `t10k` with 5, gzip or raw.
fn idx_folder(name: &str, compressed: bool) -> PathBuf {
    let dir = temp_dir(name);
    let ext = if compressed { ".gz" } else { "" };
    for (split, n) in [("train", 12u32), ("t10k", 5)] {
        let labels: Vec<u8> = (0..n as u8).map(|i| i % 10).collect();
        let (images, labels) = (idx_images(n, 28, 28), idx_labels(&labels));
        let (images, labels) = if compressed {
            (gz(&images), gz(&labels))
        } else {
            (images, labels)
        };
        write(
            &dir.join(format!("{split}-images-idx3-ubyte{ext}")),
            &images,
        );
        write(
            &dir.join(format!("{split}-labels-idx1-ubyte{ext}")),
            &labels,
        );
    }
    dir
}

#[test]
fn idx_reads_raw_and_gzip() {
    for compressed in [false, true] {
        let dir = idx_folder(&format!("idx-ok-{compressed}"), compressed);
        let splits = load_splits(DatasetKind::FashionMnist, Some(&dir)).unwrap();
        assert_eq!(splits.train.len(), 12);
        assert_eq!(splits.test.len(), 5);
        assert_eq!(splits.train.shape(), [1, 28, 28]);
        assert_eq!(splits.train.label(11), 1);
        assert_eq!(splits.train.image(1)[0], (784 * 7 % 256) as u8);
        assert_eq!(splits.train.classes()[0], "T-shirt/top");
    }
}

#[test]
fn bundled_subset_is_balanced() {
    let splits = load_splits(DatasetKind::FashionMnist, None).unwrap();
    assert_eq!((splits.train.len(), splits.test.len()), (10_000, 2_000));
    for (set, per_class) in [(&splits.train, 1000), (&splits.test, 200)] {
        let mut counts = [0usize; 10];
        for &l in set.labels() {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [per_class; 10]);
    }
}

fn assert_error(result: Result<impl std::fmt::Debug, DataError>, file: &str, needle: &str) {
    let message = result
        .expect_err("the reader must refuse this input")
        .to_string();
    assert!(message.contains(file), "`{message}` does not name `{file}`");
    assert!(
        message.contains(needle),
        "`{message}` does not say `{needle}`"
    );
}

#[test]
fn idx_malformed_files_are_named_errors() {
    let classes: Vec<&str> = (0..10).map(|_| "c").collect();
    let dir = temp_dir("idx-bad");
    let (images, labels) = (dir.join("images"), dir.join("labels"));
    write(&labels, &idx_labels(&[0, 1, 2]));

    // Wrong magic: a label file given as images.
    write(&images, &idx_labels(&[0, 1, 2]));
    assert_error(
        read_idx_pair(&images, &labels, &classes),
        "images",
        "wrong magic number",
    );
    // Truncated pixel data and truncated header.
    let full = idx_images(3, 4, 4);
    write(&images, &full[..full.len() - 5]);
    assert_error(
        read_idx_pair(&images, &labels, &classes),
        "images",
        "truncated",
    );
    write(&images, &full[..10]);
    assert_error(
        read_idx_pair(&images, &labels, &classes),
        "images",
        "truncated",
    );
    // Trailing garbage.
    let mut long = full.clone();
    long.extend([1, 2, 3]);
    write(&images, &long);
    assert_error(
        read_idx_pair(&images, &labels, &classes),
        "images",
        "unexpected bytes",
    );
    // Truncated gzip stream.
    let packed = gz(&full);
    write(&images, &packed[..packed.len() / 2]);
    assert_error(
        read_idx_pair(&images, &labels, &classes),
        "images",
        "corrupt gzip",
    );
    // Count mismatch.
    write(&images, &idx_images(4, 4, 4));
    assert_error(
        read_idx_pair(&images, &labels, &classes),
        "labels",
        "4 images but",
    );
    // Label out of range.
    write(&images, &full);
    write(&labels, &idx_labels(&[0, 10, 2]));
    assert_error(
        read_idx_pair(&images, &labels, &classes),
        "labels",
        "label 10 of item 1 is out of range",
    );
    // Missing files and folders.
    let empty = temp_dir("idx-empty");
    assert_error(
        load_splits(DatasetKind::Mnist, Some(&empty)),
        "train-images-idx3-ubyte",
        "not found",
    );
    assert_error(
        load_splits(DatasetKind::FashionMnist, Some(&empty.join("nope"))),
        "nope",
        "not found",
    );
    assert_error(
        load_splits(DatasetKind::Cifar10, None),
        "cifar10",
        "--data-dir",
    );
}

fn cifar_batch(n: usize, label: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(n * CIFAR_RECORD);
    for i in 0..n {
        bytes.push(label(i));
        bytes.extend((0..3072).map(|p| ((p + i) % 251) as u8));
    }
    bytes
}

#[test]
fn cifar_binary_reads_and_refuses_malformed_files() {
    let dir = temp_dir("cifar-bin");
    let inner = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&inner).unwrap();
    for b in 1..=5 {
        write(
            &inner.join(format!("data_batch_{b}.bin")),
            &cifar_batch(4, |i| (i + b) as u8 % 10),
        );
    }
    write(&inner.join("test_batch.bin"), &cifar_batch(3, |i| i as u8));
    let splits = load_splits(DatasetKind::Cifar10, Some(&dir)).unwrap();
    assert_eq!((splits.train.len(), splits.test.len()), (20, 3));
    assert_eq!(splits.train.shape(), [3, 32, 32]);
    assert_eq!(splits.train.label(0), 1);
    assert_eq!(splits.test.image(2)[0..2], [2, 3]);
    assert_eq!(splits.test.classes()[9], "truck");

    let bad = inner.join("test_batch.bin");
    let mut short = cifar_batch(2, |_| 0);
    short.truncate(CIFAR_RECORD + 100);
    write(&bad, &short);
    assert_error(
        read_cifar_batches(std::slice::from_ref(&bad)),
        "test_batch.bin",
        "not a positive multiple",
    );
    write(&bad, &cifar_batch(2, |i| 10 + i as u8));
    assert_error(
        read_cifar_batches(std::slice::from_ref(&bad)),
        "test_batch.bin",
        "label 10 of item 0",
    );
    std::fs::remove_file(inner.join("data_batch_3.bin")).unwrap();
    assert_error(
        load_splits(DatasetKind::Cifar10, Some(&dir)),
        "data_batch_3.bin",
        "not found",
    );
}

fn png(value: u8, size: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(size, size, |x, y| image::Rgb([value, x as u8, y as u8]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

/// `root/{train,test}/{cat,airplane}/k.png` with red channel = a code of split, class, index.
fn image_tree(root: &Path) {
    for (s, split) in ["train", "test"].iter().enumerate() {
        for (c, class) in ["cat", "airplane"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for k in 0..(3 - s) {
                write(
                    &dir.join(format!("{k:04}.png")),
                    &png((100 * s + 10 * c + k) as u8, 8),
                );
            }
        }
    }
}

#[test]
fn image_folders_and_archives() {
    let dir = temp_dir("folders");
    let root = dir.join("cifar10");
    image_tree(&root);
    let from_dir = read_image_folders(&root).unwrap();
    assert_eq!(from_dir.train.classes(), ["airplane", "cat"]);
    assert_eq!((from_dir.train.len(), from_dir.test.len()), (6, 4));
    assert_eq!(from_dir.train.shape(), [3, 8, 8]);
    // Sorted by class then name: airplane (class code 1) first.
    assert_eq!(from_dir.train.label(0), 0);
    assert_eq!(from_dir.train.image(0)[0], 10);
    assert_eq!(from_dir.train.image(3)[0], 0);
    assert_eq!(from_dir.test.image(1)[0], 111);
    // Green plane holds x.
    assert_eq!(from_dir.train.image(0)[64 + 5], 5);

    let archive = dir.join("images.tar.gz");
    {
        let file = std::fs::File::create(&archive).unwrap();
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        tar.append_dir_all("cifar10", &root).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    let from_tar = load_splits(DatasetKind::Cifar10, Some(&archive)).unwrap();
    assert_eq!(from_tar.train.labels(), from_dir.train.labels());
    assert_eq!(from_tar.test.image(3), from_dir.test.image(3));

    // A corrupt image, a truncated archive, mismatched classes.
    let broken = root.join("test").join("cat").join("0001.png");
    write(&broken, b"not an image");
    assert_error(read_image_folders(&root), "0001.png", "cannot decode image");
    write(&broken, &png(1, 8));
    let bytes = std::fs::read(&archive).unwrap();
    let cut = dir.join("cut.tar.gz");
    write(&cut, &bytes[..bytes.len() / 2]);
    assert_error(read_image_folders(&cut), "cut.tar.gz", "corrupt archive");
    std::fs::create_dir_all(root.join("train").join("dog")).unwrap();
    write(&root.join("train").join("dog").join("0.png"), &png(3, 8));
    assert_error(read_image_folders(&root), "cifar10", "different classes");
}

#[test]
fn batcher_normalises_and_augments_deterministically() {
    use burn::data::dataloader::batcher::Batcher;
    use burn::data::dataset::Dataset;
    let splits = load_splits(
        DatasetKind::FashionMnist,
        Some(&idx_folder("batcher", true)),
    )
    .unwrap();
    let set = splits.train;
    let (mean, std) = set.channel_stats();
    let device = deq_core::device::cpu();
    let plain = ImageBatcher::new(set.shape(), &mean, &std, Augment::NONE);
    let items: Vec<_> = (0..set.len())
        .map(|i| ImageDataset::new(set.clone(), 3).get(i).unwrap())
        .collect();
    let batch = plain.batch(items.clone(), &device);
    assert_eq!(batch.images.dims(), [12, 1, 28, 28]);
    let values = batch
        .images
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let avg = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
    let var = values
        .iter()
        .map(|&v| (v as f64 - avg).powi(2))
        .sum::<f64>()
        / values.len() as f64;
    assert!(
        avg.abs() < 1e-4 && (var - 1.0).abs() < 1e-3,
        "mean {avg}, variance {var}"
    );
    let expected = (set.image(0)[5] as f64 / 255.0 - mean[0]) / std[0];
    assert!((values[5] as f64 - expected).abs() < 1e-5);

    let augment = ImageBatcher::new(
        set.shape(),
        &mean,
        &std,
        Augment {
            crop_padding: 4,
            flip: true,
        },
    );
    let a = augment
        .batch(items.clone(), &device)
        .images
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let b = augment
        .batch(items, &device)
        .images
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(a, b, "the same seeds give the same augmentation");
    assert_ne!(a, values, "augmentation changes the images");
    let items2: Vec<_> = (0..set.len())
        .map(|i| ImageDataset::new(set.clone(), 4).get(i).unwrap())
        .collect();
    let c = augment
        .batch(items2, &device)
        .images
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_ne!(a, c, "another epoch seed gives other augmentations");

    let rgb = set.padded_rgb(32).unwrap();
    assert_eq!(rgb.shape(), [3, 32, 32]);
    assert_eq!(rgb.image(0)[2 * 32 + 2], set.image(0)[0]);
    assert_eq!(rgb.image(0)[1024 + 2 * 32 + 2], set.image(0)[0]);
    assert_eq!(rgb.image(0)[0], 0);
}

#[test]
fn limits_draw_a_fixed_representative_sample() {
    // A class-sorted set (as image folders are): 10 classes × 50 images.
    let labels: Vec<u8> = (0..500).map(|i| (i / 50) as u8).collect();
    let pixels: Vec<u8> = (0..500u32)
        .flat_map(|i| [(i % 256) as u8, (i / 256) as u8])
        .collect();
    let classes: Vec<String> = (0..10).map(|c| c.to_string()).collect();
    let set =
        deq_train::data::ImageSet::new(Path::new("sorted"), [1, 1, 2], pixels, labels, classes)
            .unwrap();
    let a = set.sample(100);
    assert_eq!(a.len(), 100);
    assert_eq!(
        a.labels(),
        set.sample(100).labels(),
        "the same draw every time"
    );
    let ids: Vec<u32> = (0..100)
        .map(|i| a.image(i)[0] as u32 + 256 * a.image(i)[1] as u32)
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "distinct images in their original order"
    );
    let mut counts = [0usize; 10];
    for &l in a.labels() {
        counts[l as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| (3..=20).contains(&c)),
        "every class represented: {counts:?}"
    );
    assert_eq!(set.sample(1000).len(), 500);
}

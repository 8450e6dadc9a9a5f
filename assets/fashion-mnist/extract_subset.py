#!/usr/bin/env python3
"""Extract the bundled class-balanced Fashion-MNIST subset from Debian's package.

    apt-get install -y dataset-fashion-mnist
    python3 assets/fashion-mnist/extract_subset.py

Takes, in file order, the first 1,000 training images of each class (10,000) and the first
200 test images of each class (2,000), and writes them as IDX files compressed with gzip
(mtime 0, so the output is byte-for-byte reproducible).
"""
import gzip
import os
import struct

SOURCE = "/usr/share/datasets/fashion-mnist"
HERE = os.path.dirname(os.path.abspath(__file__))


def read(split):
    with gzip.open(f"{SOURCE}/{split}-images-idx3-ubyte.gz") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 0x803, magic
        images = f.read()
    with gzip.open(f"{SOURCE}/{split}-labels-idx1-ubyte.gz") as f:
        magic, m = struct.unpack(">II", f.read(8))
        assert magic == 0x801 and m == n, (magic, m, n)
        labels = f.read()
    size = rows * cols
    return [images[i * size:(i + 1) * size] for i in range(n)], labels, rows, cols


def write(split, per_class):
    images, labels, rows, cols = read(split)
    taken, counts = [], [0] * 10
    for i, label in enumerate(labels):
        if counts[label] < per_class:
            counts[label] += 1
            taken.append(i)
    assert counts == [per_class] * 10, counts
    def gz(path, payload):
        with open(path, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
                f.write(payload)
    gz(f"{HERE}/{split}-images-idx3-ubyte.gz",
       struct.pack(">IIII", 0x803, len(taken), rows, cols) + b"".join(images[i] for i in taken))
    gz(f"{HERE}/{split}-labels-idx1-ubyte.gz",
       struct.pack(">II", 0x801, len(taken)) + bytes(labels[i] for i in taken))
    print(f"{split}: {len(taken)} images, {per_class} per class")


write("train", 1000)
write("t10k", 200)

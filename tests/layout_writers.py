"""Writers of datasets in torchvision's and Keras's on-disk layouts, for the tests.

Every fixture is written from the embedded sklearn digits by small writers that follow the
formats' specifications (idx headers, CIFAR's pickled dicts with bytes keys and its binary
records, Keras's four-array .npz). ``tests/test_layouts.py`` checks the reader against them and
``tests/test_train_layouts.py`` trains on them.
"""

import gzip
import pickle
import struct

import numpy as np
from sklearn.datasets import load_digits

N_TRAIN = 1500  # of the 1,797 digits; the other 297 are the test split

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def upscale(images, size):
    """Nearest-neighbour resize of N x 8 x 8 to N x size x size."""
    idx = np.arange(size) * images.shape[1] // size
    return images[:, idx][:, :, idx]


def digits():
    """The 1,797 embedded digits as uint8 8 x 8 images (0..255) and int64 labels."""
    data = load_digits()
    gray = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)
    return gray, data.target.astype(np.int64)


def gray28(data=None):
    """(x_train, y_train, x_test, y_test): the digits as 28 x 28 grey, the first N_TRAIN for
    training, the other 297 for test."""
    x, y = data if data is not None else digits()
    x = upscale(x, 28)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def colour32(data=None):
    """N x 32 x 32 x 3 with three different channels, so a channel-order slip cannot pass."""
    x, y = data if data is not None else digits()
    x = upscale(x, 32)
    x = np.stack([x, 255 - x, x // 2], axis=-1)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def idx_bytes(array):
    magic = struct.pack(">HBB", 0, 0x08, array.ndim)
    return magic + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(path, array, gz=False):
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, compresslevel=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_torchvision(root, data, name="MNIST", gz=False):
    """root/<name>/raw/ as torchvision's MNIST-style datasets leave it; returns the raw folder."""
    x_train, y_train, x_test, y_test = data
    raw = root / name / "raw"
    write_idx(raw / "train-images-idx3-ubyte", x_train, gz)
    write_idx(raw / "train-labels-idx1-ubyte", y_train, gz)
    write_idx(raw / "t10k-images-idx3-ubyte", x_test, gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", y_test, gz)
    return raw


def write_emnist(root, data, split):
    """EMNIST's files store each image transposed; the reader must undo it."""
    x_train, y_train, x_test, y_test = data
    raw = root / "EMNIST" / "raw"
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        write_idx(raw / f"emnist-{split}-{part}-images-idx3-ubyte", x.transpose(0, 2, 1))
        write_idx(raw / f"emnist-{split}-{part}-labels-idx1-ubyte", y)
    return raw


def cifar_records(x):
    """N x 32 x 32 x 3 as CIFAR stores it: 3072 bytes per image, red plane, green, blue."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)


def py2_pickle(obj):
    """``obj`` pickled as Python 2 wrote CIFAR's files: protocol 2, byte strings as STRING
    opcodes (no _codecs), arrays rebuilt through ``numpy.core.multiarray._reconstruct``."""
    if isinstance(obj, bytes):
        if len(obj) < 256:
            return b"U" + bytes([len(obj)]) + obj
        return b"T" + struct.pack("<I", len(obj)) + obj
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if obj is None:
        return b"N"
    if isinstance(obj, list):
        return b"](" + b"".join(py2_pickle(v) for v in obj) + b"e"
    if isinstance(obj, tuple):
        return b"(" + b"".join(py2_pickle(v) for v in obj) + b"t"
    if isinstance(obj, dict):
        return b"}(" + b"".join(py2_pickle(k) + py2_pickle(v) for k, v in obj.items()) + b"u"
    assert isinstance(obj, np.ndarray) and obj.dtype == np.uint8
    dtype = (b"cnumpy\ndtype\n" + py2_pickle((b"u1", 0, 1)) + b"R"
             + py2_pickle((3, b"|", None, None, None, -1, -1, 0)) + b"b")
    return (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n" + py2_pickle((0,))
            + py2_pickle(b"b") + b"tR(" + py2_pickle(1) + py2_pickle(tuple(obj.shape)) + dtype
            + py2_pickle(False) + py2_pickle(obj.tobytes()) + b"tb")


def dump(path, obj, protocol):
    """pickle.dump at ``protocol``, or "py2" for a file as Python 2 would have written it."""
    if protocol == "py2":
        path.write_bytes(b"\x80\x02" + py2_pickle(obj) + b".")
        return
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10_python(root, data, protocol="py2"):
    """cifar-10-batches-py: five training batches, a test batch and batches.meta, bytes keys."""
    x_train, y_train, x_test, y_test = data
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    chunks = np.array_split(np.arange(len(x_train)), 5)
    for i, idx in enumerate(chunks, start=1):
        dump(folder / f"data_batch_{i}", {b"batch_label": f"training batch {i} of 5".encode(),
                                          b"labels": [int(v) for v in y_train[idx]],
                                          b"data": cifar_records(x_train[idx]),
                                          b"filenames": [b"x.png"] * len(idx)}, protocol)
    dump(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1",
                                 b"labels": [int(v) for v in y_test],
                                 b"data": cifar_records(x_test)}, protocol)
    dump(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                   b"num_cases_per_batch": 10000, b"num_vis": 3072}, protocol)
    return folder


def fine(y):
    """Spread the ten digit labels over CIFAR-100's 0..99, up to the top label."""
    return y * 10 + 9


def write_cifar100_python(root, data, resaved=False):
    """cifar-100-python as downloaded (bytes keys, int labels), or as a Python 3 script might
    re-save it (str keys, numpy integer labels)."""
    x_train, y_train, x_test, y_test = data
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    key = (lambda k: k) if resaved else (lambda k: k.encode())
    labels = list if resaved else (lambda y: [int(v) for v in y])
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        dump(folder / part, {key("data"): cifar_records(x), key("fine_labels"): labels(fine(y)),
                             key("coarse_labels"): labels(y * 2)}, 2)
    dump(folder / "meta", {key("fine_label_names"): [f"class{i}" for i in range(100)],
                           key("coarse_label_names"): [f"super{i}" for i in range(20)]}, 2)
    return folder


def binary_records(x, *label_columns):
    labels = [np.asarray(c, dtype=np.uint8)[:, None] for c in label_columns]
    return np.concatenate(labels + [cifar_records(x)], axis=1).tobytes()


def write_cifar10_binary(root, data):
    x_train, y_train, x_test, y_test = data
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for i, idx in enumerate(np.array_split(np.arange(len(x_train)), 5), start=1):
        (folder / f"data_batch_{i}.bin").write_bytes(binary_records(x_train[idx], y_train[idx]))
    (folder / "test_batch.bin").write_bytes(binary_records(x_test, y_test))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    return folder


def write_cifar100_binary(root, data):
    x_train, y_train, x_test, y_test = data
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    (folder / "train.bin").write_bytes(binary_records(x_train, y_train * 2, fine(y_train)))
    (folder / "test.bin").write_bytes(binary_records(x_test, y_test * 2, fine(y_test)))
    (folder / "fine_label_names.txt").write_text("\n".join(f"class{i}" for i in range(100)))
    (folder / "coarse_label_names.txt").write_text("\n".join(f"super{i}" for i in range(20)))
    return folder


def write_keras_npz(path, data):
    x_train, y_train, x_test, y_test = data
    np.savez(path, x_train=x_train, y_train=y_train.astype(np.uint8), x_test=x_test,
             y_test=y_test.astype(np.uint8))
    return path

"""Own data: image folders read on demand, .npz files, their splits, the bad-data errors
(one message naming the file), and seeded resumable batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import make_image_folder

from clusterloss.data import Batches, DataError, ImageFiles, load_dataset
from clusterloss.sampling import MPerClassSampler


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "photos"
    make_image_folder(root, classes=4, per_class=10, size=12)
    return root


def test_folder_split_by_image_is_seeded_and_stratified(folder):
    data = load_dataset(folder, val_split=0.2, test_split=0.3, image_size=8)
    assert data.class_names == ["class_0", "class_1", "class_2", "class_3"]
    for y, n in ((data.y_train, 5), (data.y_val, 2), (data.y_test, 3)):
        assert np.array_equal(np.bincount(y), [n] * 4)
    parts = [data.x_train.paths, data.x_val.paths, data.x_test.paths]
    assert len(set().union(*parts)) == 40  # disjoint, everything used
    again = load_dataset(folder, val_split=0.2, test_split=0.3, image_size=8)
    assert again.x_test.paths == data.x_test.paths
    other = load_dataset(folder, val_split=0.2, test_split=0.3, image_size=8, seed=1)
    assert other.x_test.paths != data.x_test.paths
    for paths, labels in ((data.x_train.paths, data.y_train), (data.x_test.paths, data.y_test)):
        assert [data.class_names[c] for c in labels] == [p.split("/")[-2] for p in paths]


def test_folder_split_by_class_and_defaults(folder):
    data = load_dataset(folder, known_classes=[2, 0], image_size=8)
    assert data.class_names == ["class_2", "class_0"] and data.unknown_class_names == ["class_1", "class_3"]
    assert len(data.y_unknown) == 20 and set(data.y_unknown) == {2, 3}
    assert all(p.split("/")[-2] in ("class_1", "class_3") for p in data.x_unknown.paths)
    # defaults for own data: 20% test, 10% validation of each known class
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (14, 2, 4)


def test_image_files_read_only_the_rows_asked(folder, monkeypatch):
    data = load_dataset(folder, image_size=(6, 8))
    files = data.x_train
    assert isinstance(files, ImageFiles) and files.shape == (len(files), 6, 8, 3)
    read = []
    import clusterloss.data.images as images

    original = images.read_image
    monkeypatch.setattr(images, "read_image", lambda p, *args: read.append(p) or original(p, *args))
    batch = files[np.array([3, 0])]
    assert sorted(read) == sorted([files.paths[3], files.paths[0]]) and batch.shape == (2, 6, 8, 3)
    expected = np.asarray(Image.open(files.paths[3]).convert("RGB").resize((8, 6), Image.BILINEAR))
    np.testing.assert_allclose(batch[0], expected / 255.0, atol=1e-6)
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    assert files.subset([1, 2]).paths == files.paths[1:3] and len(read) == 2  # no reading


def _pixels(path, size) -> np.ndarray:
    """The reference: Pillow's full decode, RGB, bilinear resize, / 255."""
    image = Image.open(path).convert("RGB")
    return np.asarray(image.resize((size[1], size[0]), Image.BILINEAR), np.float64) / 255.0


def test_image_files_are_read_in_parallel_in_row_order(tmp_path):
    """Rows come back in the order asked (decoded on all cores); a JPEG larger than the size
    asked is decoded at a reduced scale, close to the full decode; a file that cannot be
    read fails naming it."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        path = tmp_path / f"{i:02d}.jpg"
        coarse = rng.integers(0, 256, (4, 4, 3), np.uint8)
        Image.fromarray(coarse).resize((64, 64), Image.BILINEAR).save(path, quality=95)
        paths.append(str(path))
    rows = rng.permutation(24)[:20]
    files = ImageFiles(paths, (64, 64), channels=3)
    np.testing.assert_allclose(files[rows], [_pixels(paths[r], (64, 64)) for r in rows], atol=1e-6)
    small = ImageFiles(paths, (16, 16), channels=3)[rows]  # decoded at 1/4 scale, then resized
    error = np.abs(small - [_pixels(paths[r], (16, 16)) for r in rows])
    assert error.mean() < 0.02 and small.dtype == np.float32
    data = Path(paths[7]).read_bytes()
    Path(paths[7]).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"07\.jpg: not a readable image"):
        files[np.arange(24)]


def test_jpeg_decoders_give_the_same_pixels(tmp_path, monkeypatch):
    """JPEGs are decoded by simplejpeg where it is installed, else by Pillow: the same pixels
    (within one 8-bit level; equal with today's libjpeg-turbo builds) at the file's size and
    at 1/2, 1/4 and 1/8 scale, colour (4:2:0, 4:4:4 progressive) and grayscale, for files
    and for the search service's bytes; CMYK JPEGs and PNGs are Pillow's either way."""
    pytest.importorskip("simplejpeg")
    import clusterloss.data.images as images

    rng = np.random.default_rng(0)
    noise = np.kron(rng.integers(0, 256, (18, 24, 3), np.uint8), np.ones((4, 4, 1), np.uint8))  # 72x96
    files = {}
    for name, image, options in (
        ("420.jpg", Image.fromarray(noise), {"quality": 90}),
        ("444.jpg", Image.fromarray(noise), {"quality": 90, "subsampling": 0, "progressive": True}),
        ("gray.jpg", Image.fromarray(noise[..., 1]), {"quality": 90}),
        ("cmyk.jpg", Image.fromarray(noise).convert("CMYK"), {"quality": 90}),
        ("rgb.png", Image.fromarray(noise), {}),
    ):
        image.save(tmp_path / name, **options)
        files[name] = str(tmp_path / name)
    cases = [(name, size, channels) for name in files for size in ((72, 96), (30, 40), (17, 20), (9, 12))
             for channels in (1, 3)]  # fmt: skip
    fast = {case: images.read_image(files[case[0]], case[1], case[2]) for case in cases}
    modes = [images.check_image(path) for path in files.values()]  # the start-up check
    for name, size, channels in cases:
        data = Path(files[name]).read_bytes()
        used = images._jpeg_pixels(data, size, channels, None) is not None
        assert used == (name in ("420.jpg", "444.jpg") and channels == 3 or name == "gray.jpg"), name
        assert np.array_equal(images.decode_image(data, size, channels), fast[name, size, channels])
    monkeypatch.setattr(images, "simplejpeg", None)
    assert [images.check_image(path) for path in files.values()] == modes == ["RGB", "RGB", "L", "CMYK", "RGB"]
    for (name, size, channels), pixels in fast.items():
        pillow = images.read_image(files[name], size, channels)
        assert pixels.shape == pillow.shape == (*size, channels) and pixels.dtype == np.float32
        tolerance = 1.001 / 255 if name.endswith(".jpg") else 0
        assert np.abs(pixels - pillow).max() <= tolerance, (name, size, channels)


def test_batches_read_ahead_are_those_of_their_epoch(folder):
    """With files read ahead (across the end of an epoch too), batch i of epoch e holds the
    rows of permutation (seed, e), whatever was read before it, in whatever order; an
    M-per-class sampler of the files gives the batches it gives on arrays."""
    data = load_dataset(folder, val_split=0.0, test_split=0.2, image_size=8)
    files, y = data.x_train, data.y_train
    images = np.stack([_pixels(p, (8, 8)) for p in files.paths])

    def expected(epoch: int, index: int):
        rows = np.random.default_rng([3, epoch]).permutation(len(y))[index * 5 : index * 5 + 5]
        return images[rows], y[rows]

    batches = Batches(files, y, batch_size=5, shuffle=True, seed=3)
    assert batches.prefetch == 2 and Batches(images, y).prefetch == 0
    for epoch, order in ((0, range(len(batches))), (1, [5, 0, 1, 6, 2, 3, 4]), (2, [0, 1])):
        for index in order:
            x, labels = batches[index]
            want_x, want_y = expected(epoch, index)
            np.testing.assert_allclose(x, want_x, atol=1e-6, err_msg=f"{epoch}, {index}")
            assert np.array_equal(labels, want_y)
        batches.on_epoch_end()
    resumed = Batches(files, y, batch_size=5, shuffle=True, seed=3, epoch=1, prefetch=1)
    np.testing.assert_allclose(resumed[3][0], expected(1, 3)[0], atol=1e-6)
    sampler = MPerClassSampler(files, y, m=2, batch_size=4, seed=3)  # M-per-class: the same
    plain = MPerClassSampler(images, y, m=2, batch_size=4, seed=3)  # arrays: none read ahead
    assert sampler.prefetch == 2 and plain.prefetch == 0
    for order in (range(len(sampler)), reversed(range(len(sampler))), [1, 0]):
        for index in order:
            np.testing.assert_allclose(sampler[index][0], plain[index][0], atol=1e-6)
            assert np.array_equal(sampler[index][1], y[plain.indices[index]])
        sampler.on_epoch_end()
        plain.on_epoch_end()
    with pytest.raises(ValueError, match=r"`prefetch` must be an int >= 0; got -1"):
        Batches(files, y, prefetch=-1)


def test_recycled_batch_arrays_are_never_shared(folder):
    """A batch array is handed out again only when nothing holds it: the batches a model
    predicts on (JAX dispatches asynchronously; backends may share the NumPy memory) keep
    their values, and an array held, or a view of it, is not reused."""
    import keras

    from clusterloss.data.images import Recycler

    data = load_dataset(folder, val_split=0.0, test_split=0.2, image_size=8)
    images = np.stack([_pixels(p, (8, 8)) for p in data.x_train.paths])
    identity = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Identity()])
    predicted = identity.predict(Batches(data.x_train, batch_size=3), verbose=0)
    np.testing.assert_allclose(predicted, images, atol=1e-6)
    recycler = Recycler(keep=3)
    first = recycler.empty((2, 3))
    view = recycler.empty((2, 3))[0]
    assert recycler.empty((2, 3)) is not first and view.base is not first
    first_id = id(first)
    del first
    assert id(recycler.empty((2, 3))) == first_id


def test_grayscale_is_detected(tmp_path):
    make_image_folder(tmp_path / "gray", classes=2, per_class=3, size=10, grayscale=True)
    data = load_dataset(tmp_path / "gray", val_split=0.0, test_split=0.0, image_size=10)
    assert data.input_shape == (10, 10, 1)
    assert data.x_train[0].shape == (10, 10, 1)


@pytest.mark.parametrize("problem", ["unreadable", "one image", "one class", "empty class"])
def test_bad_folders_name_the_file(tmp_path, problem):
    root = tmp_path / "bad"
    make_image_folder(root, classes=3, per_class=3, size=8)
    if problem == "unreadable":
        (root / "class_1" / "img_001.png").write_bytes(b"not a png")
        message = r"class_1/img_001\.png: not a readable image"
    elif problem == "one image":
        for name in ("img_001.png", "img_002.png"):
            (root / "class_2" / name).unlink()
        message = r"bad/class_2: class folder with 1 image\(s\); every class needs at least 2"
    elif problem == "empty class":
        for path in (root / "class_0").iterdir():
            path.unlink()
        message = r"bad/class_0: class folder with 0 image\(s\)"
    else:
        for name in ("class_1", "class_2"):
            for path in (root / name).iterdir():
                path.unlink()
            (root / name).rmdir()
        message = r"bad: 1 class\(es\); need at least 2"
    with pytest.raises(DataError, match=message):
        load_dataset(root)


def test_npz_arrays(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", x=images, y=np.repeat([7, 3, 9], 10))
    data = load_dataset(tmp_path / "images.npz", val_split=0.0, test_split=0.2)
    assert data.class_names == ["3", "7", "9"] and data.input_shape == (5, 5, 1)
    assert data.x_train.dtype == np.float32 and data.x_train.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(data.y_test), [2, 2, 2])

    np.savez(tmp_path / "short.npz", x=np.zeros((5, 3)), y=np.zeros(4, int))
    with pytest.raises(DataError, match=r"short\.npz: 'x' has 5 rows but 'y' has 4"):
        load_dataset(tmp_path / "short.npz")
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((5, 3)))
    with pytest.raises(DataError, match=r"nolabels\.npz: needs arrays 'x' and 'y'; found \['x'\]"):
        load_dataset(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "lonely.npz", x=np.zeros((5, 3)), y=np.array([0, 0, 1, 1, 2]))
    with pytest.raises(DataError, match=r"lonely\.npz: class '2' has 1 sample\(s\)"):
        load_dataset(tmp_path / "lonely.npz")
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"table\.csv: a data file must be an \.npz"):
        load_dataset(tmp_path / "table.csv")


def test_batches_are_seeded_per_epoch():
    x, y = np.arange(10)[:, None], np.arange(10) % 2
    plain = Batches(x, y, batch_size=4)
    assert len(plain) == 3 and plain[2][0].ravel().tolist() == [8, 9]
    shuffled = Batches(x, y, batch_size=4, shuffle=True, seed=3)
    epoch0 = np.concatenate([shuffled[i][0] for i in range(3)]).ravel()
    assert sorted(epoch0) == list(range(10)) and epoch0.tolist() != list(range(10))
    shuffled.on_epoch_end()
    epoch1 = np.concatenate([shuffled[i][0] for i in range(3)]).ravel()
    assert epoch1.tolist() != epoch0.tolist()
    resumed = Batches(x, y, batch_size=4, shuffle=True, seed=3, epoch=1)  # what a resume sees
    assert np.concatenate([resumed[i][0] for i in range(3)]).ravel().tolist() == epoch1.tolist()
    xb, yb = resumed[0]
    assert np.array_equal(yb, xb.ravel() % 2)
    with pytest.raises(IndexError):
        resumed[3]


def test_deep_images_keep_their_bit_depth(tmp_path):
    """16-bit PNGs (Pillow mode I;16) scaled by 65535, not clipped to 8 bits (all white);
    32-bit int and float images by their modes' ranges."""
    from clusterloss.data.images import to_pixels

    rng = np.random.default_rng(0)
    saved = {}
    for k in range(2):
        (tmp_path / "deep" / f"c{k}").mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 65536, (6, 6), dtype=np.uint16)
            path = tmp_path / "deep" / f"c{k}" / f"{i}.png"
            Image.fromarray(pixels).save(path)
            saved[str(path)] = pixels / 65535.0
    data = load_dataset(tmp_path / "deep", val_split=0.0, test_split=0.3, image_size=6)
    assert data.input_shape == (6, 6, 1)
    for i, path in enumerate(data.x_train.paths):
        np.testing.assert_allclose(data.x_train[i][..., 0], saved[path], atol=1e-6)
    assert data.x_train[np.arange(len(data.y_train))].mean() < 0.6  # was 1.0: blank images
    rgb = ImageFiles(data.x_train.paths[:1], (3, 3), channels=3)[0]
    assert rgb.shape == (3, 3, 3) and np.array_equal(rgb[..., 0], rgb[..., 2]) and rgb.max() < 1
    wide = Image.fromarray(np.array([[0, 2**30], [2**31 - 1, 7]], np.int32))
    np.testing.assert_allclose(to_pixels(wide, (2, 2), 1)[..., 0], [[0, 0.5], [1, 7 / (2**31 - 1)]])
    real = Image.fromarray(np.array([[0.25, 1.0]], np.float32))
    np.testing.assert_allclose(to_pixels(real, (1, 2), 1).ravel(), [0.25, 1.0])
    with pytest.raises(ValueError, match=r"mode F pixels in \[0\.25, 2\], outside its range \[0, 1\]"):
        to_pixels(Image.fromarray(np.array([[0.25, 2.0]], np.float32)), (1, 2), 1)


@pytest.mark.parametrize("problem", ["truncated jpeg", "truncated png", "decompression bomb"])
def test_images_that_cannot_be_decoded_fail_at_the_scan(tmp_path, problem, monkeypatch):
    """Found when the folder is scanned (before training), in one line naming the file."""
    root = tmp_path / "bad"
    make_image_folder(root, classes=2, per_class=3, size=40)
    bad = root / "class_1" / "img_001.png"
    if problem == "decompression bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 40 x 40 > 2 x 300
        message = r"class_0/img_000\.png: not a readable image \(Image size \(1600 pixels\) exceeds"
    else:
        kind = "JPEG" if problem == "truncated jpeg" else "PNG"
        if kind == "JPEG":
            bad.unlink()
            bad = bad.with_suffix(".jpg")
            Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(bad)
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        message = rf"class_1/{bad.name}: not a readable image \(.*[Tt]runcated"
    with pytest.raises(DataError, match=message):
        load_dataset(root)


def test_a_broken_class_link_is_an_error(tmp_path):
    """A class folder that is a dangling link (an unmounted disk) is named, not dropped."""
    root = tmp_path / "linked"
    make_image_folder(root, classes=3, per_class=3, size=8)
    (root / "class_3").symlink_to(tmp_path / "unmounted" / "class_3")
    with pytest.raises(DataError, match=r"linked/class_3: a broken link \(to .*unmounted/class_3\)"):
        load_dataset(root)
    (root / "class_3").unlink()
    (root / "class_2" / "more").symlink_to(tmp_path / "gone")  # inside a class folder too
    with pytest.raises(DataError, match=r"class_2/more: a broken link"):
        load_dataset(root)


def test_a_folder_of_splits_is_not_read_as_classes(tmp_path):
    """`data/train/CLASS`, `data/val/CLASS` (the most common layout on disk) would train as two
    classes, "train" and "val": refused, naming a split to pass instead."""
    make_image_folder(tmp_path / "data" / "train", classes=3, per_class=4, size=8)
    make_image_folder(tmp_path / "data" / "Val", classes=3, per_class=2, size=8, seed=1)
    with pytest.raises(
        DataError, match=r"data: its sub-folders Val, train look like the splits of a data set.*--data .*data/Val"
    ):
        load_dataset(tmp_path / "data")
    found = load_dataset(tmp_path / "data" / "train", val_split=0.0, test_split=0.25)
    assert found.class_names == ["class_0", "class_1", "class_2"]
    # classes that happen to have a split's name but hold images: still classes
    for name in ("train", "test"):
        (tmp_path / "flat" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / "flat" / name / f"{i}.png")
    assert load_dataset(tmp_path / "flat", val_split=0.0, test_split=0.34).class_names == ["test", "train"]

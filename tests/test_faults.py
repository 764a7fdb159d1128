"""Fault injection: the `xai-graph` command under hostile models, paths, files, signals and disks.

What this suite proves, against the real EfficientNet-Lite0 in samples/:

- crafted ONNX models (100 seeded structural and byte-level mutations) and crafted IR
  (truncated, mismatched or missing .bin, malformed XML, entity expansion) end in exit 0
  with a model ONNX Runtime loads, or exit 1 with one `error:` line: never a traceback,
  an internal error (exit 2) or a hang, and the input files are never changed;
- no path trick (external data, hard links, symlinks, an IR's .bin, a --labels file,
  explain into its own input folder with --overwrite) makes a run write over its inputs;
- FIFOs, devices, sockets, decompression bombs and sparse giant files fail one image
  fast and with bounded memory, and the run goes on (exit 3);
- concurrent runs into one folder, kill -9 at random points, SIGINT and SIGTERM lose no
  record and leave no partial file, journal, lock or staging folder after the next run;
- a read-only or full file system is one `error:` line that names the cause, and leaves
  nothing behind; user errors are one line (exit 1) or a Click usage error (exit 2);
- files get the process umask's permissions; --debug alone shows an internal traceback.

Subprocesses get their own TMPDIR, so every test can assert that nothing stayed there.
Run with `-s` to see the counts (mutations inserted/refused, peak memory on the bombs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
MODEL = SAMPLES / "efficientnet_lite0.onnx"
PHOTOS = sorted((SAMPLES / "images").iterdir())
CLI = Path(sys.executable).parent / "xai-graph"
SCRATCH = ".xai-graph"  # staging folders, partial files, the journal and the folder lock all start so
TEMP = "xai-graph-"  # models instrumented on the fly, in $TMPDIR
# stderr lines explain may print besides `error:` and `note:` lines.
EXPLAIN_LINES = ("explaining", "interrupted:")
EXPLAIN_LINE = re.compile(r"^(\d+ failed: see .*|.* has no saliency_map: instrumented on the fly with \w+)$")


# -- running the command ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    code: int | None  # None: killed by the test (hang or memory)
    stdout: str = ""
    stderr: str = ""
    escaped: str | None = None  # in-process: an exception that escaped the CLI (a traceback in a terminal)
    killed: str | None = None  # why the test killed it
    peak_mb: float = 0.0
    seconds: float = 0.0
    args: list = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"xai-graph {' '.join(map(str, self.args))}\n  exit {self.code} ({self.seconds:.1f} s)"
            f"{' KILLED: ' + self.killed if self.killed else ''}\n  stdout: {self.stdout[-800:]!r}\n"
            f"  stderr: {self.stderr[-3000:]!r}{chr(10) + '  escaped: ' + self.escaped if self.escaped else ''}"
        )

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def invoke(*args, env: dict | None = None) -> Outcome:
    """The CLI in this process (Click's CliRunner); the signal handler and warning hook it installs are restored."""
    from click.testing import CliRunner

    from xai_graph.cli.main import main

    handler, show = signal.getsignal(signal.SIGTERM), warnings.showwarning
    start = time.monotonic()
    try:
        result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    finally:
        signal.signal(signal.SIGTERM, handler)
        warnings.showwarning = show
    escaped = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        escaped = "".join(traceback.format_exception(*result.exc_info))
    return Outcome(
        result.exit_code, result.stdout, result.stderr, escaped, seconds=time.monotonic() - start, args=list(args)
    )


@dataclass
class Running:
    proc: subprocess.Popen
    out: object
    err: object
    start: float
    args: list


def running(run: Running) -> bool:
    """Whether the child still runs (without reaping it: `finish` reads its exit status and peak memory)."""
    return os.waitid(os.P_PID, run.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def wait_for(condition, run: Running, timeout: float = 30, step: float = 0.005) -> bool:
    """Poll `condition()` until it holds (True), the child exits or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running(run):
        if condition():
            return True
        time.sleep(step)
    return False


def has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open now."""
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(fd.path) == str(path):
                    return True
    return False


def start_cli(*args, env: dict | None = None, cwd: Path | None = None, umask: int = -1) -> Running:
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [str(CLI), *map(str, args)], stdout=out, stderr=err, env=env, cwd=cwd, umask=umask, start_new_session=True
    )
    return Running(proc, out, err, time.monotonic(), list(args))


def _memory_mb(pid: int, field: str = "VmRSS") -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = re.search(field + r":\s+(\d+) kB", status)
    return int(found.group(1)) / 1024 if found else 0.0


def finish(run: Running, timeout: float = 120, rss_cap_mb: float | None = None) -> Outcome:
    """Wait for the child; kill it (and say why) past `timeout` seconds or `rss_cap_mb` of memory. Its peak RSS
    is the kernel's high-water mark of the child's own memory (VmHWM, sampled every 10 ms until it exits):
    wait4's ru_maxrss would include the forking pytest process's size, which Linux carries across exec."""
    killed = None
    peak = 0.0
    while True:
        pid, status, _ = os.wait4(run.proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, _memory_mb(run.proc.pid, "VmHWM"))
        if not killed and rss_cap_mb and _memory_mb(run.proc.pid) > rss_cap_mb:
            killed = f"memory over {rss_cap_mb:.0f} MB"
        elif not killed and time.monotonic() - run.start > timeout:
            killed = f"hang: still running after {timeout:.0f} s"
        if killed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)
        time.sleep(0.01)
    run.proc.returncode = code = os.waitstatus_to_exitcode(status)
    texts = []
    for f in (run.out, run.err):
        f.seek(0)
        texts.append(f.read().decode(errors="replace"))
        f.close()
    return Outcome(
        None if killed else code,
        texts[0],
        texts[1],
        killed=killed,
        peak_mb=peak,
        seconds=time.monotonic() - run.start,
        args=run.args,
    )


def run_cli(*args, timeout: float = 120, **options) -> Outcome:
    rss_cap_mb = options.pop("rss_cap_mb", None)
    return finish(start_cli(*args, **options), timeout, rss_cap_mb)


def problem(result: Outcome, codes=(0, 1), error: str | None = None, explain: bool = False) -> str | None:
    """What is wrong with an outcome, or None: an allowed exit code; no traceback or internal error; exit 1 with
    exactly one `error:` line (matching `error`); exit 2 only as Click's usage error; other stderr lines only
    `note:` (and explain's own progress and summary lines)."""
    if result.killed:
        return result.killed
    if result.escaped:
        return "an exception escaped the CLI:\n" + result.escaped
    if "Traceback" in result.stderr:
        return "a traceback on stderr"
    if "internal error" in result.stderr:
        return "an internal error"
    if result.code not in codes:
        return f"exit {result.code}, expected {' or '.join(map(str, codes))}"
    if result.code == 2:
        return None if re.search(r"Invalid value|Usage:", result.stderr) else "exit 2 that is not a usage error"
    if len(result.errors) > 1:
        return f"{len(result.errors)} error lines"
    if result.code == 1 and len(result.errors) != 1:
        return "exit 1 without an error: line"
    for line in result.stderr.splitlines():
        if not line.strip() or line.startswith(("error:", "note:")):
            continue
        if explain and (line.startswith(EXPLAIN_LINES) or EXPLAIN_LINE.match(line)):
            continue
        return f"an unexpected stderr line: {line!r}"
    if error and result.code == 1 and not re.search(error, result.errors[0], re.I):
        return f"the error line does not say /{error}/"
    return None


def expect(result: Outcome, codes=(0, 1), error: str | None = None, explain: bool = False) -> None:
    why = problem(result, codes, error, explain)
    assert why is None, f"{why}\n{result}"


# -- files -----------------------------------------------------------------------------------------------
def digest(*paths: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under `paths` (files or folders), by path; names in `skip` left out."""
    found = {}
    for root in map(Path, paths):
        files = [root] if not root.is_dir() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            if p.name not in skip and p.is_file() and not stat.S_ISFIFO(p.stat().st_mode):
                found[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def leftovers(folder: Path) -> list[str]:
    """Staging folders, partial files, journals and locks that a finished run must not leave."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(SCRATCH + "*"))


def stale_temp(tmpdir: Path) -> list[str]:
    """xai-graph's folders left in a TMPDIR (OpenVINO's telemetry keeps its own `.ses` file there)."""
    return sorted(p.name for p in tmpdir.iterdir() if p.name.startswith(TEMP)) if tmpdir.exists() else []


def child_env(tmp_path: Path, **extra) -> dict:
    """The environment of a child run: its own TMPDIR, to be found empty at the end."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmpdir), "XAI_GRAPH_DEBUG": "", **extra}


def photo_folder(folder: Path, count: int, prefix: str = "p") -> Path:
    """`count` photos, copies of the samples under distinct names."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        source = PHOTOS[i % len(PHOTOS)]
        shutil.copyfile(source, folder / f"{prefix}{i:03d}_{source.name}")
    return folder


def gallery_problems(out: Path, images: list[Path] | None = None, leftover_check: bool = True) -> list[str]:
    """An explain output folder after a finished run: predictions.json lists `images` (at least), every file it
    lists exists, index.html exists, and no journal, lock or partial file is left."""
    found = []
    try:
        predictions = json.loads((out / "predictions.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"predictions.json unreadable: {exc}"]
    records = {r["image"]: r for r in predictions["images"]}
    if images is not None:
        missing = sorted({str(p.resolve()) for p in images} - set(records))
        if missing:
            found.append(f"{len(missing)} images missing from predictions.json, e.g. {missing[:3]}")
    absent = [f for r in records.values() for f in r["files"] if not (out / f).is_file()]
    if absent:
        found.append(f"{len(absent)} listed files do not exist, e.g. {absent[:3]}")
    if not (out / "index.html").is_file():
        found.append("no index.html")
    if leftover_check and leftovers(out):
        found.append(f"leftovers {leftovers(out)}")
    return found


def loads_in_onnxruntime(path: Path) -> str | None:
    """None if ONNX Runtime loads the model and it has a saliency_map output; else why not."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        return f"ONNX Runtime cannot load {path.name}: {str(exc)[:300]}"
    if "saliency_map" not in [o.name for o in session.get_outputs()]:
        return f"{path.name} has no saliency_map output"
    return None


def logits(path: Path) -> np.ndarray:
    import onnxruntime as ort

    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": image})[0]


@pytest.fixture(autouse=True)
def nothing_written_elsewhere(tmp_path_factory, monkeypatch):
    """Every test runs (and starts its children) in an empty working folder that must stay empty, and may not
    change the bundled samples: nothing is written beside the caller or the inputs."""

    def listing():
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(SAMPLES.rglob("*"))}

    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    before = listing()
    yield
    assert listing() == before, "samples/ changed"
    assert sorted(p.name for p in cwd.iterdir()) == [], "files written in the working folder"


@pytest.fixture(scope="module")
def lite0_xai(tmp_path_factory) -> Path:
    """The real model with a Recipro-CAM head, inserted once."""
    out = tmp_path_factory.mktemp("lite0") / "lite0_xai.onnx"
    expect(run_cli("insert", MODEL, "-o", out), (0,))
    return out


@pytest.fixture(scope="module")
def irs(tmp_path_factory) -> dict[str, Path]:
    """The instrumented model as IR (x.xml), the plain model as IR (plain.xml), and a larger IR of another model."""
    import openvino as ov
    from onnx import helper, numpy_helper

    folder = tmp_path_factory.mktemp("ir")
    expect(run_cli("insert", MODEL, "-o", folder / "x.xml"), (0,))
    ov.save_model(ov.convert_model(str(MODEL)), str(folder / "plain.xml"), compress_to_fp16=False)
    weights = np.random.default_rng(0).standard_normal((3000, 2000)).astype(np.float32)  # 24 MB > x.bin's 18.6 MB
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2000])],
        [numpy_helper.from_array(weights, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "other.onnx"))
    ov.save_model(ov.convert_model(str(folder / "other.onnx")), str(folder / "other.xml"), compress_to_fp16=False)
    assert (folder / "other.bin").stat().st_size > (folder / "x.bin").stat().st_size
    return {name: folder / f"{name}.xml" for name in ("x", "plain", "other")}


def copy_ir(xml: Path, folder: Path, name: str = "m") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(xml, folder / f"{name}.xml")
    shutil.copyfile(xml.with_suffix(".bin"), folder / f"{name}.bin")
    return folder / f"{name}.xml"


# -- 1. crafted ONNX models ------------------------------------------------------------------------------
_SWAPS = {
    "Clip": ["Sigmoid", "Relu", "Add", "Softmax"],
    "Conv": ["Add", "MatMul", "Relu", "MaxPool"],
    "Add": ["Mul", "Sub", "Conv", "Concat"],
    "Reshape": ["Transpose", "Flatten", "Expand"],
    "Pad": ["Identity", "Relu", "Tile"],
    "Concat": ["Add", "Sum"],
    "Gemm": ["MatMul", "Add"],
    "GlobalAveragePool": ["GlobalMaxPool", "Relu", "Flatten"],
    "Transpose": ["Identity", "Reshape"],
    "Slice": ["Gather", "Identity"],
    "Cast": ["Relu", "Identity"],
}


def _node(m: onnx.ModelProto, rng: random.Random, op: str | None = None, with_inputs: bool = False):
    nodes = [n for n in m.graph.node if (op is None or n.op_type == op) and (n.input or not with_inputs)]
    return rng.choice(nodes)


def _attribute(node, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _externalise(
    m: onnx.ModelProto,
    folder: Path,
    location: str,
    offset: int | None = None,
    length: int | None = None,
    write: bool = False,
) -> None:
    """Move the classifier's weight to external data at `location` (written only if `write`)."""
    tensor = next(t for t in m.graph.initializer if t.name == "_fc.weight")
    data = tensor.raw_data or onnx.numpy_helper.to_array(tensor).tobytes()
    if write:
        (folder / location).write_bytes(data)
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            tensor.external_data.add(key=key, value=str(value))


def _input_dim(axis: int, value) -> callable:
    def mutate(m, rng, folder):
        dim = m.graph.input[0].type.tensor_type.shape.dim[axis]
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value

    return mutate


def _opset(version: int) -> callable:
    def mutate(m, rng, folder):
        m.opset_import[0].version = version

    return mutate


def _elem_type(kind: int) -> callable:
    def mutate(m, rng, folder):
        m.graph.input[0].type.tensor_type.elem_type = kind

    return mutate


def _m_delete_node(m, rng, folder):
    del m.graph.node[rng.randrange(len(m.graph.node))]


def _m_rewire(m, rng, folder):
    node = _node(m, rng, with_inputs=True)
    names = [o for n in m.graph.node for o in n.output] + [t.name for t in m.graph.initializer] + ["image"]
    node.input[rng.randrange(len(node.input))] = rng.choice(names)


def _m_rewire_missing(m, rng, folder):
    node = _node(m, rng, with_inputs=True)
    node.input[rng.randrange(len(node.input))] = "no_such_value"


def _m_rename_output(m, rng, folder):
    node = _node(m, rng)
    node.output[0] += "_renamed"


def _m_op_type(m, rng, folder):
    node = rng.choice([n for n in m.graph.node if n.op_type in _SWAPS])
    node.op_type = rng.choice(_SWAPS[node.op_type])


def _m_drop_initializer(m, rng, folder):
    del m.graph.initializer[rng.randrange(len(m.graph.initializer))]


def _m_initializer_dims(m, rng, folder):
    tensor = rng.choice(list(m.graph.initializer))
    change = rng.choice(["grow", "append", "drop", "zero"])
    if change == "grow" or (change in ("drop", "zero") and not tensor.dims):
        tensor.dims.append(2) if not tensor.dims else tensor.dims.__setitem__(0, tensor.dims[0] + 1)
    elif change == "append":
        tensor.dims.append(1)
    elif change == "drop":
        del tensor.dims[-1]
    else:
        tensor.dims[0] = 0


def _m_initializer_dtype(m, rng, folder):
    rng.choice([t for t in m.graph.initializer if t.data_type == TensorProto.FLOAT]).data_type = TensorProto.INT64


def _m_attribute(m, rng, folder):
    change = rng.choice(["concat_axis", "strides_0", "kernel_shape", "pads_negative", "group", "perm", "gemm_trans"])
    if change == "concat_axis":
        _attribute(_node(m, rng, "Concat"), "axis", rng.choice([7, -9, 100]))
    elif change == "strides_0":
        _attribute(_node(m, rng, "Conv"), "strides", [0, 0])
    elif change == "kernel_shape":
        _attribute(_node(m, rng, "Conv"), "kernel_shape", rng.choice([[5, 5], [1, 1, 1], [0, 0]]))
    elif change == "pads_negative":
        _attribute(_node(m, rng, "Conv"), "pads", [-3, -3, -3, -3])
    elif change == "group":
        _attribute(_node(m, rng, "Conv"), "group", 7)
    elif change == "perm":
        _attribute(_node(m, rng, "Transpose"), "perm", [0, 0, 1, 2, 3, 4])
    else:
        _attribute(_node(m, rng, "Gemm"), "transB", 0)


def _m_duplicate_node(m, rng, folder):
    copy = onnx.NodeProto()
    copy.CopyFrom(_node(m, rng, "Conv"))
    m.graph.node.append(copy)  # the same outputs defined twice


def _m_duplicate_name(m, rng, folder):
    m.graph.node[-1].name = m.graph.node[-2].name = "twin"  # only a name: renamed, and inserted


def _m_no_outputs(m, rng, folder):
    del m.graph.output[:]


def _m_output_missing(m, rng, folder):
    m.graph.output[0].name = "does_not_exist"


def _m_no_inputs(m, rng, folder):
    del m.graph.input[:]


def _m_custom_domain(m, rng, folder):
    node = _node(m, rng, "Clip")
    node.domain = "com.example.custom"
    m.opset_import.append(onnx.helper.make_opsetid("com.example.custom", 1))


def _m_reversed(m, rng, folder):
    nodes = list(m.graph.node)[::-1]
    del m.graph.node[:]
    m.graph.node.extend(nodes)


def _m_cycle(m, rng, folder):
    conv = [n for n in m.graph.node if n.op_type == "Conv"]
    early, late = conv[1], conv[-1]
    early.input[0] = late.output[0]  # the late conv depends on the early one: a loop


def _m_value_info(m, rng, folder):
    m.graph.value_info.append(
        onnx.helper.make_tensor_value_info(_node(m, rng, "Conv").output[0], TensorProto.FLOAT, [1, 2])
    )


def _m_constant_value(m, rng, folder):
    node = _node(m, rng, "Constant")
    for a in node.attribute:
        if a.name == "value":
            a.t.dims.append(7)


def _m_ir_version(version: int) -> callable:
    def mutate(m, rng, folder):
        m.ir_version = version

    return mutate


def _m_external(location: str, write: bool = False, offset: int | None = None, length: int | None = None):
    def mutate(m, rng, folder):
        _externalise(m, folder, location, offset, length, write)

    return mutate


def _b_truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(1, len(data))]


def _b_flip(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.choice([1, 4, 64])):
        buffer[rng.randrange(len(buffer))] ^= rng.randrange(1, 256)
    return bytes(buffer)


def _b_flip_header(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(8):  # the graph's structure lives before the big weights
        buffer[rng.randrange(min(len(buffer), 200_000))] ^= rng.randrange(1, 256)
    return bytes(buffer)


# Mutations tried once each; seeded random ones fill the rest up to 100 cases.
FIXED = {
    "input dim 0": _input_dim(2, 0),
    "input dim -1": _input_dim(2, -1),
    "input dim 10**6": _input_dim(2, 10**6),
    "input dim symbol": _input_dim(2, "height"),
    "input batch 0": _input_dim(0, 0),
    "input 60000x60000": lambda m, rng, f: (_input_dim(2, 60000)(m, rng, f), _input_dim(3, 60000)(m, rng, f)),
    "input int32": _elem_type(TensorProto.INT32),
    "input string": _elem_type(TensorProto.STRING),
    "opset 1": _opset(1),
    "opset 5": _opset(5),
    "opset 30": _opset(30),
    "opset 99": _opset(99),
    "ir_version 0": _m_ir_version(0),
    "ir_version 99": _m_ir_version(99),
    "custom domain": _m_custom_domain,
    "nodes reversed": _m_reversed,
    "cycle": _m_cycle,
    "duplicate node": _m_duplicate_node,
    "duplicate node name": _m_duplicate_name,
    "no outputs": _m_no_outputs,
    "output name missing": _m_output_missing,
    "no inputs": _m_no_inputs,
    "wrong value_info": _m_value_info,
    "constant dims": _m_constant_value,
    "initializer dtype": _m_initializer_dtype,
    "external ../../etc/passwd": _m_external("../../etc/passwd"),
    "external deep ../etc/passwd": _m_external("../" * 24 + "etc/passwd"),
    "external /etc/passwd": _m_external("/etc/passwd"),
    "external missing file": _m_external("weights.data"),
    "external huge offset": _m_external("weights.data", write=True, offset=10**12, length=1000 * 1280 * 4),
    "external length past end": _m_external("weights.data", write=True, offset=0, length=10**9),
    "external valid": _m_external("weights.data", write=True),
    "bytes empty": lambda data, rng: b"",
    "bytes text": lambda data, rng: b"this is not a model\n" * 10,
    "bytes header flips": _b_flip_header,
}
RANDOM = {
    "delete node": _m_delete_node,
    "rewire input": _m_rewire,
    "rewire input to missing": _m_rewire_missing,
    "rename output": _m_rename_output,
    "change op_type": _m_op_type,
    "drop initializer": _m_drop_initializer,
    "initializer dims": _m_initializer_dims,
    "attribute": _m_attribute,
    "truncate bytes": _b_truncate,
    "flip bytes": _b_flip,
}
BYTE_LEVEL = {"bytes empty", "bytes text", "bytes header flips", "truncate bytes", "flip bytes"}
MUTATION_CASES = [*FIXED, *(list(RANDOM) * 10)][:100]


def build_mutant(index: int, kind: str, folder: Path) -> Path:
    """Case `index`: the real model with mutation `kind` (seeded by the index), saved as folder/model.onnx."""
    rng = random.Random(1000 + index)
    mutate = FIXED.get(kind) or RANDOM[kind]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    if kind in BYTE_LEVEL:
        path.write_bytes(mutate(MODEL.read_bytes(), rng))
        return path
    model = onnx.load(str(MODEL))
    mutate(model, rng, folder)
    path.write_bytes(model.SerializeToString())
    return path


def mutation_case(index: int, kind: str, folder: Path) -> dict:
    """Insert one mutant in this process; a report of what happened and of what went wrong."""
    model = build_mutant(index, kind, folder)
    before = digest(folder)
    out = folder / "out.onnx"
    result = invoke("insert", model, "-o", out)
    report = {
        "index": index,
        "kind": kind,
        "code": result.code,
        "seconds": round(result.seconds, 2),
        "error": (result.errors or [""])[0][:300],
        "problems": [],
    }
    why = problem(result, (0, 1))
    if why:
        report["problems"].append(f"insert: {why}: {result.stderr[-600:]}{result.escaped or ''}")
    if digest(folder, skip=("out.onnx", "out.onnx.data")) != before:
        report["problems"].append("the input files changed")
    if result.code == 0:
        why = loads_in_onnxruntime(out)
        if why:
            report["problems"].append(why)
    elif out.exists() or Path(f"{out}.data").exists():
        report["problems"].append("refused, yet out.onnx was written")
    if leftovers(folder):
        report["problems"].append(f"leftovers {leftovers(folder)}")
    if index % 3 == 0:
        looked = invoke("inspect", model)
        report["inspect"] = looked.code
        why = problem(looked, (0, 1))
        if why:
            report["problems"].append(f"inspect: {why}: {looked.stderr[-600:]}{looked.escaped or ''}")
    shutil.rmtree(folder, ignore_errors=True)
    return report


def _mutation_worker(spec_path: str) -> None:
    """Child process: run the cases of a spec, one JSON line each (a `start` line first, so a hang names its case)."""
    spec = json.loads(Path(spec_path).read_text())
    with open(spec["results"], "a") as results:
        for index, kind in spec["cases"]:
            results.write(json.dumps({"start": index}) + "\n")
            results.flush()
            results.write(json.dumps(mutation_case(index, kind, Path(spec["base"]) / f"{index:03d}")) + "\n")
            results.flush()


def run_mutations(cases: list[tuple[int, str]], base: Path, per_case_timeout: float = 60) -> list[dict]:
    """Run the cases in a child process, restarted past a case that hangs (reported as such)."""
    reports: dict[int, dict] = {}
    pending = list(cases)
    results = base / "results.jsonl"
    while pending:
        spec = base / "spec.json"
        spec.write_text(json.dumps({"cases": pending, "base": str(base / "cases"), "results": str(results)}))
        code = (
            f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_faults; test_faults._mutation_worker({str(spec)!r})"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=child_env(base),
        )
        last_progress, started = time.monotonic(), None
        seen = 0
        while True:
            lines = results.read_text().splitlines() if results.exists() else []
            for line in lines[seen:]:
                entry = json.loads(line)
                if "start" in entry:
                    started = entry["start"]
                else:
                    reports[entry["index"]] = entry
                    started = None
                last_progress = time.monotonic()
            seen = len(lines)
            if child.poll() is not None:
                break
            if started is not None and time.monotonic() - last_progress > per_case_timeout:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                break
            time.sleep(0.05)
        stderr = child.stderr.read().decode(errors="replace")
        child.stderr.close()
        if started is not None:  # the child died or hung inside this case
            kind = dict(cases)[started]
            how = "hang" if child.returncode == -signal.SIGKILL else f"the process died ({child.returncode})"
            reports[started] = {"index": started, "kind": kind, "code": None, "problems": [f"{how}: {stderr[-800:]}"]}
        elif child.returncode != 0:
            raise AssertionError(f"the mutation worker failed: {stderr[-2000:]}")
        pending = [(i, k) for i, k in cases if i not in reports]
        results.unlink(missing_ok=True)
        for i in {int(p.name) for p in (base / "cases").glob("*") if p.name.isdigit()}:
            shutil.rmtree(base / "cases" / f"{i:03d}", ignore_errors=True)
    return [reports[i] for i, _ in cases]


def test_crafted_models_are_inserted_or_refused_in_one_line(tmp_path):
    """100 seeded mutations of the real model: exit 0 with a model ONNX Runtime loads, or exit 1 in one line;
    never a traceback, an internal error or a hang; the input unchanged; nothing written on refusal."""
    reports = run_mutations(list(enumerate(MUTATION_CASES)), tmp_path)
    inserted = [r for r in reports if r["code"] == 0]
    refused = [r for r in reports if r["code"] == 1]
    bad = [r for r in reports if r["problems"]]

    def count(*words):
        return sum(any(w in p for p in r["problems"] for w in words) for r in reports)

    print(
        f"\nmutations: {len(reports)} tried, {len(inserted)} inserted (ONNX Runtime loads each), "
        f"{len(refused)} refused in one line, {len(bad)} with problems ({count('an internal error')} internal "
        f"errors, {count('a traceback on stderr', 'an exception escaped')} tracebacks, {count('hang:')} hangs, "
        f"{count('input files changed')} inputs changed); {sum('inspect' in r for r in reports)} also inspected"
    )
    for r in reports:
        print(f"  {r['index']:3d} {r['kind']:<28} exit {r['code']}  {r.get('error', '')[:110]}")
    assert not bad, "\n\n".join(
        f"case {r['index']} ({r['kind']}): exit {r['code']}\n  " + "\n  ".join(r["problems"]) for r in bad
    )
    assert not [r for r in reports if r["kind"] == "duplicate node name" and r["code"] != 0], (
        "a model whose only flaw is a repeated node name must insert"
    )
    assert not [
        r
        for r in reports
        if r["kind"].startswith(
            ("opset 30", "opset 99", "custom domain", "input dim 0", "input batch 0", "input 60000")
        )
        and r["code"] != 1
    ], "models the runtimes cannot run must be refused"


# -- 2. crafted IR ----------------------------------------------------------------------------------------
def _billion_laughs(xml: bytes) -> bytes:
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
    )
    declaration, rest = xml.split(b"?>", 1) if xml.startswith(b"<?xml") else (b'<?xml version="1.0"', xml)
    rest = re.sub(rb'<net name="[^"]*"', b'<net name="&lol9;"', rest, count=1)
    return declaration + b"?>\n<!DOCTYPE net [" + entities.encode() + b"]>" + rest


IR_FAULTS = {
    # name: (how the .xml and .bin of folder/m are made, what the error line must say)
    "truncated bin": (lambda x, b, other: (x.read_bytes(), b.read_bytes()[: b.stat().st_size // 2]), r"\.bin|weights"),
    "another model's larger bin": (lambda x, b, other: (x.read_bytes(), other.read_bytes()), r"\.bin|weights"),
    "missing bin": (lambda x, b, other: (x.read_bytes(), None), r"\.bin|weights"),
    "empty bin": (lambda x, b, other: (x.read_bytes(), b""), r"\.bin|weights"),
    "malformed xml": (lambda x, b, other: (x.read_bytes()[: x.stat().st_size // 3], b.read_bytes()), None),
    "xml garbage": (lambda x, b, other: (b"<net>\x00\xff<<<>>>" * 100, b.read_bytes()), None),
    "billion laughs": (lambda x, b, other: (_billion_laughs(x.read_bytes()), b.read_bytes()), None),
}


@pytest.mark.parametrize("fault", list(IR_FAULTS))
def test_crafted_ir_is_refused_in_one_line(irs, tmp_path, fault):
    """A broken IR: exit 1 with one line that names the cause (not OpenVINO's 'Exception from src/...:84:'),
    under 1.5 GB of memory (entity expansion), the files unchanged, nothing written. insert gets the broken
    plain IR (an IR with a head is refused for that); inspect and explain get the broken instrumented one."""
    make, cause = IR_FAULTS[fault]
    env = child_env(tmp_path)
    runs = {
        "insert": (irs["plain"], lambda m: ["insert", m, "-o", tmp_path / "out.xml"]),
        "inspect": (irs["x"], lambda m: ["inspect", m]),
        "explain": (irs["x"], lambda m: ["explain", m, "-i", PHOTOS[0], "-o", tmp_path / "out", "-q"]),
    }
    for command, (source, args) in runs.items():
        folder = tmp_path / command
        folder.mkdir()
        xml_bytes, bin_bytes = make(source, source.with_suffix(".bin"), irs["other"].with_suffix(".bin"))
        (folder / "m.xml").write_bytes(xml_bytes)
        if bin_bytes is not None:
            (folder / "m.bin").write_bytes(bin_bytes)
        before = digest(folder)
        result = run_cli(*args(folder / "m.xml"), env=env, rss_cap_mb=1500, timeout=60)
        expect(result, (1,), cause, explain=True)
        assert not re.search(r"Exception from|\.cpp:\d+|Check '", result.errors[0]), result
        assert result.peak_mb < 1500, result
        assert digest(folder) == before, "the IR changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explain", "insert", "inspect", "tmpdir"], (
        "a refused run wrote files"
    )
    assert stale_temp(tmp_path / "tmpdir") == []


# -- 3. crafted paths: no run writes over its inputs ---------------------------------------------------------
@pytest.fixture
def external_model(tmp_path) -> Path:
    """a.onnx whose weights live in b.onnx.data: the data file `insert a.onnx -o b.onnx` would write."""
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(
        onnx.load(str(MODEL)),
        str(folder / "a.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="b.onnx.data",
        size_threshold=1024,
    )
    return folder / "a.onnx"


ONNX_PATH_TRAPS = {
    "output writes the input's external data": lambda a: (a, a.parent / "b.onnx", []),
    "output is the external data file": lambda a: (a, a.parent / "b.onnx.data", []),
    "output is the input": lambda a: (a, a, []),
    "output is a hard link of the input": lambda a: (a, _link(a, a.parent / "h.onnx", hard=True), []),
    "output is a symlink to the input": lambda a: (a, _link(a, a.parent / "s.onnx"), []),
    "output's .data is a hard link of the input's data": lambda a: (
        a,
        (_link(a.parent / "b.onnx.data", a.parent / "c.onnx.data", hard=True), a.parent / "c.onnx")[1],
        [],
    ),
    "output's .data is a symlink to the input's data": lambda a: (
        a,
        (_link(a.parent / "b.onnx.data", a.parent / "d.onnx.data"), a.parent / "d.onnx")[1],
        [],
    ),
    "input through a symlink, output the real file": lambda a: (_link(a, a.parent / "via.onnx"), a, []),
    "--labels file is the output": lambda a: (
        a,
        _labels(a.parent / "names.onnx"),
        ["--labels", a.parent / "names.onnx"],
    ),
    "--labels file is the output's .data": lambda a: (
        a,
        a.parent / "o.onnx",
        ["--labels", _labels(a.parent / "o.onnx.data")],
    ),
}


def _link(target: Path, link: Path, hard: bool = False) -> Path:
    os.link(target, link) if hard else link.symlink_to(target)
    return link


def _labels(path: Path) -> Path:
    path.write_text("\n".join(f"class {i}" for i in range(1000)) + "\n")
    return path


@pytest.mark.parametrize("trap", list(ONNX_PATH_TRAPS))
def test_insert_never_writes_over_what_it_reads(external_model, trap):
    folder = external_model.parent
    expected = logits(external_model)
    model, output, extra = ONNX_PATH_TRAPS[trap](external_model)
    before = digest(folder)
    result = invoke("insert", model, "-o", output, *extra)
    expect(result, (1,), r"refusing to overwrite|must end with \.onnx")
    assert digest(folder) == before, "an input file changed"
    assert np.array_equal(logits(external_model), expected), "the model computes something else now"
    assert leftovers(folder) == []


def test_insert_output_with_a_non_model_suffix_is_refused(external_model):
    folder = external_model.parent
    before = digest(folder)
    for output in ("out.pt", "b.onnx.data", "a.onnx.bak"):
        expect(invoke("insert", external_model, "-o", folder / output), (1,), r"\.onnx|\.xml|refusing")
        assert digest(folder) == before and not (folder / "out.pt").exists()


IR_PATH_TRAPS = {
    "output is the input": lambda m: (m, m, []),
    "output is a symlink to the input": lambda m: (m, _link(m, m.parent / "link.xml"), []),
    "output's .bin is a symlink to the input's .bin": lambda m: (
        m,
        (_link(m.with_suffix(".bin"), m.parent / "o.bin"), m.parent / "o.xml")[1],
        [],
    ),
    "output's .bin is a hard link of the input's .bin": lambda m: (
        m,
        (_link(m.with_suffix(".bin"), m.parent / "h.bin", hard=True), m.parent / "h.xml")[1],
        [],
    ),
    "input through symlinks, output the real files": lambda m: (
        (_link(m.with_suffix(".bin"), m.parent / "via.bin"), _link(m, m.parent / "via.xml"))[1],
        m,
        [],
    ),
    "--labels file is the output's .bin": lambda m: (m, m.parent / "l.xml", ["--labels", _labels(m.parent / "l.bin")]),
}


@pytest.mark.parametrize("trap", list(IR_PATH_TRAPS))
def test_insert_on_ir_never_writes_over_its_bin(irs, tmp_path, trap):
    xml = copy_ir(irs["plain"], tmp_path / "ir")
    model, output, extra = IR_PATH_TRAPS[trap](xml)
    before = digest(xml.parent)
    expect(invoke("insert", model, "-o", output, *extra), (1,), "refusing to overwrite")
    assert digest(xml.parent) == before, "an input file changed"
    assert leftovers(xml.parent) == []


def test_explain_into_its_own_photo_folder_never_replaces_a_photo(lite0_xai, tmp_path):
    """`explain -i photos -o photos --overwrite` where photos are named like outputs (x_image.jpg beside x.png, the
    overlay and map names of the predicted class): every photo keeps its bytes, run after run."""
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copyfile(SAMPLES / "images" / "chelsea.png", photos / "chelsea.png")
    shutil.copyfile(SAMPLES / "images" / "rocket.jpg", photos / "chelsea_image.jpg")
    shutil.copyfile(SAMPLES / "images" / "coffee.png", photos / "chelsea_Egyptian_cat_overlay.jpg")
    shutil.copyfile(SAMPLES / "images" / "astronaut.png", photos / "chelsea_Egyptian_cat_saliency_map.png")
    before = digest(photos)
    env = child_env(tmp_path)
    for _ in range(2):  # the second run also finds the first run's outputs as inputs
        expect(
            run_cli("explain", lite0_xai, "-i", photos, "-o", photos, "--overwrite", "-q", env=env), (0,), explain=True
        )
        assert {k: v for k, v in digest(photos).items() if k in before} == before, "an input photo was replaced"
    assert gallery_problems(photos, [Path(p) for p in before]) == []
    assert stale_temp(tmp_path / "tmpdir") == []


@pytest.mark.parametrize("link", ["hard link", "symlink"])
def test_a_link_to_a_photo_under_an_output_name_spares_the_photo(lite0_xai, tmp_path, link):
    """The output folder holds, under chelsea.png's overlay name, a link to a photo of the run: with --overwrite
    the photo keeps its bytes, chelsea.png is still explained (under another name), and every image file the
    run wrote is listed in predictions.json (none orphaned)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copyfile(SAMPLES / "images" / "chelsea.png", photos / "chelsea.png")
    shutil.copyfile(SAMPLES / "images" / "rocket.jpg", photos / "rocket.jpg")
    out = tmp_path / "out"
    out.mkdir()
    _link(photos / "rocket.jpg", out / "chelsea_Egyptian_cat_overlay.jpg", hard=link == "hard link")
    before = digest(photos)
    result = run_cli("explain", lite0_xai, "-i", photos, "-o", out, "--overwrite", "-q", env=child_env(tmp_path))
    assert digest(photos) == before, "a photo was replaced through a link in the output folder"
    expect(result, (0,), explain=True)
    assert gallery_problems(out, [photos / "chelsea.png", photos / "rocket.jpg"]) == []
    listed = {f for r in json.loads((out / "predictions.json").read_text())["images"] for f in r["files"]}
    orphans = sorted(
        p.name
        for p in out.iterdir()
        if p.suffix in (".png", ".jpg") and p.name not in listed and p.name != "chelsea_Egyptian_cat_overlay.jpg"
    )
    assert orphans == [], f"files written but listed nowhere: {orphans}"


# -- 4. FIFOs, devices, sockets ------------------------------------------------------------------------------
def _special(kind: str, folder: Path) -> tuple[Path, object]:
    """A path that is not a regular file; the object to keep alive while it is used."""
    if kind == "fifo":
        os.mkfifo(folder / "fifo.jpg")
        return folder / "fifo.jpg", None
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(folder / "sock.png"))
        sock.listen()
        return folder / "sock.png", sock
    if kind == "folder named .jpg":
        (folder / "dir.jpg").mkdir()
        return folder / "dir.jpg", None
    return Path("/dev/zero"), None


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "socket"])
def test_special_files_fail_one_image_fast(lite0_xai, tmp_path, kind):
    """`explain -i good.png -i SPECIAL`: back within 30 s, exit 3, SPECIAL recorded as failed, good.png explained."""
    path, keep = _special(kind, tmp_path)
    out = tmp_path / "out"
    try:
        result = run_cli(
            "explain",
            lite0_xai,
            "-i",
            PHOTOS[1],
            "-i",
            path,
            "-o",
            out,
            "-q",
            env=child_env(tmp_path),
            timeout=30,
            rss_cap_mb=2000,
        )
    finally:
        if keep is not None:
            keep.close()
    expect(result, (3,), explain=True)
    records = {r["image"]: r for r in json.loads((out / "predictions.json").read_text())["images"]}
    assert records[str(path.resolve())]["error"], records
    assert records[str(PHOTOS[1].resolve())]["files"], records
    assert gallery_problems(out) == [] and stale_temp(tmp_path / "tmpdir") == []


@pytest.mark.parametrize("command", ["insert", "inspect", "explain", "insert IR"])
def test_a_fifo_as_the_model_is_refused_fast(tmp_path, command):
    model = tmp_path / ("model.xml" if command == "insert IR" else "model.onnx")
    os.mkfifo(model)
    args = {
        "insert": ["insert", model, "-o", tmp_path / "out.onnx"],
        "inspect": ["inspect", model],
        "explain": ["explain", model, "-i", PHOTOS[0], "-o", tmp_path / "out", "-q"],
        "insert IR": ["insert", model, "-o", tmp_path / "out.xml"],
    }[command]
    result = run_cli(*args, env=child_env(tmp_path), timeout=10)  # start-up takes ~2 s
    expect(result, (1,), explain=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [model.name, "tmpdir"]
    assert stale_temp(tmp_path / "tmpdir") == []


# -- 5. decompression bombs and giant files -------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 30000) -> bytes:
    """A valid side x side 8-bit grayscale PNG of zeros (about 1 MB), compressed row by row."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then the pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(png_bomb())
    assert path.stat().st_size < 5 * 2**20
    return path


MEMORY_BOUND_MB = 1024


def _sparse_jpeg(path: Path, size: int = 3 * 2**30) -> None:
    """A 3 GB .jpg that holds a few bytes: a JPEG start, then a hole."""
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
        f.truncate(size)


@pytest.mark.parametrize("kind", ["png bomb x4", "sparse 3 GB jpg"])
def test_oversized_images_fail_fast_in_bounded_memory(lite0_xai, bomb, tmp_path, kind):
    """Bad giants beside one good photo: exit 3, the giants recorded as failed, the photo explained; the run's
    peak RSS stays under MEMORY_BOUND_MB (the child is killed at 3 GB) and it ends within 60 s."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(SAMPLES / "images" / "chelsea.png", folder / "good.png")
    if kind == "png bomb x4":
        giants = [folder / f"bomb{i}.png" for i in range(4)]
        for g in giants:
            shutil.copyfile(bomb, g)
    else:
        giants = [folder / "sparse.jpg"]
        _sparse_jpeg(giants[0])
    out = tmp_path / "out"
    result = run_cli(
        "explain", lite0_xai, "-i", folder, "-o", out, "-q", env=child_env(tmp_path), timeout=60, rss_cap_mb=3000
    )
    print(f"\n{kind}: exit {result.code}, peak RSS {result.peak_mb:.0f} MB, {result.seconds:.1f} s")
    expect(result, (3,), explain=True)
    assert result.peak_mb < MEMORY_BOUND_MB, f"peak RSS {result.peak_mb:.0f} MB"
    records = {Path(r["image"]).name: r for r in json.loads((out / "predictions.json").read_text())["images"]}
    assert all(records[g.name]["error"] for g in giants), records
    assert records["good.png"]["files"] and not records["good.png"]["error"]
    assert gallery_problems(out) == [] and stale_temp(tmp_path / "tmpdir") == []


def test_a_model_with_a_60000x60000_input_is_refused(tmp_path):
    model = onnx.load(str(MODEL))
    for axis in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = 60000
    path = tmp_path / "huge.onnx"
    onnx.save(model, str(path))
    for args in (["insert", path, "-o", tmp_path / "out.onnx"], ["inspect", path]):
        expect(invoke(*args), (1,), "values per image|4096")
    assert not (tmp_path / "out.onnx").exists() and leftovers(tmp_path) == []


# -- 6. concurrent runs into one folder ---------------------------------------------------------------------
def _records(out: Path) -> dict[str, dict]:
    return {r["image"]: r for r in json.loads((out / "predictions.json").read_text())["images"]}


def _images(folder: Path) -> list[Path]:
    return sorted(p.resolve() for p in folder.iterdir())


@pytest.mark.parametrize("start", ["together", "second once the first holds the folder"])
def test_concurrent_runs_into_one_folder_lose_nothing(lite0_xai, tmp_path, start):
    """Two explain runs into one folder: one is refused in one line (exit 1) and the other succeeds, or both
    succeed one after the other; predictions.json lists every image of every successful run; a third run after
    both adds its images to the union."""
    count = 40 if start == "together" else 100  # ~1.5 s or ~3.5 s of work for the first, 0.2 s for the second
    first, second = photo_folder(tmp_path / "a", count, "a"), photo_folder(tmp_path / "b", 6, "b")
    out = tmp_path / "out"
    env = child_env(tmp_path)
    one = start_cli("explain", lite0_xai, "-i", first, "-o", out, "-q", env=env)
    if start != "together":
        wait_for((out / ".xai-graph.lock").exists, one)
    two = start_cli("explain", lite0_xai, "-i", second, "-o", out, "-q", env=env)
    results = {"first": finish(one), "second": finish(two)}
    for result in results.values():
        expect(result, (0, 1), "another xai-graph run .* is writing to this folder", explain=True)
    codes = sorted(r.code for r in results.values())
    print(f"\nconcurrent runs started {start}: exits {results['first'].code} and {results['second'].code}")
    assert codes in ([0, 1], [0, 0]), codes
    if start != "together":
        assert (results["first"].code, results["second"].code) == (0, 1), "the second run was not refused"
    succeeded = [
        p for name, folder in (("first", first), ("second", second)) if results[name].code == 0 for p in _images(folder)
    ]
    assert gallery_problems(out, succeeded) == []
    refused = [name for name, r in results.items() if r.code == 1]
    for name in refused:  # run again what was refused: the folder then lists both
        expect(
            run_cli("explain", lite0_xai, "-i", {"first": first, "second": second}[name], "-o", out, "-q", env=env),
            (0,),
            explain=True,
        )
    expect(run_cli("explain", lite0_xai, "-i", second, "-o", out, "-q", env=env), (0,), explain=True)
    assert gallery_problems(out, _images(first) + _images(second)) == []
    assert len(_records(out)) == count + 6
    assert stale_temp(tmp_path / "tmpdir") == []


# -- 7. kill -9 at random points ----------------------------------------------------------------------------
def test_insert_killed_at_random_points_leaves_the_old_state_or_a_whole_model(tmp_path):
    """kill -9 during insert, 5 seeded times: the output is absent or a model ONNX Runtime loads; the input
    unchanged; the next insert into the folder removes the staging folder a killed run left."""
    rng = random.Random(7)
    model = tmp_path / "in" / "model.onnx"
    model.parent.mkdir()
    shutil.copyfile(MODEL, model)
    before = digest(model.parent)
    folder = tmp_path / "out"
    folder.mkdir()
    env = child_env(tmp_path)
    stages = []
    for i in range(5):
        out = folder / f"k{i}.onnx"
        run = start_cli("insert", model, "-o", out, env=env)
        if i % 2:  # a random time: in start-up (~1.5 s) or in the work (~1 s)
            time.sleep(rng.uniform(1.2, 3.0))
        else:  # while the model is being written and checked
            wait_for(lambda: leftovers(folder), run)
            time.sleep(rng.uniform(0, 0.3))
        os.kill(run.proc.pid, signal.SIGKILL)  # (a zombie, if it just finished, takes it quietly)
        killed = finish(run)
        stages.append(f"kill {i}: exit {killed.code}, staging {leftovers(folder)}, output {out.exists()}")
        assert digest(model.parent) == before, "the input changed"
        if out.exists():
            assert loads_in_onnxruntime(out) is None, f"a killed insert left a broken {out.name}"
        expect(invoke("insert", model, "-o", folder / "next.onnx"), (0,))
        assert leftovers(folder) == [], f"after kill {i} and a normal insert: {leftovers(folder)}"
        (folder / "next.onnx").unlink()
    print("\n" + "\n".join(stages))
    assert stale_temp(tmp_path / "tmpdir") == []


def test_explain_killed_at_random_points_loses_no_record(tmp_path):
    """kill -9 during explain (a model instrumented on the fly, 40 photos), 5 seeded times, each followed by the
    same run into the same folder: that run exits 0, predictions.json lists every image and every file it lists
    exists, no partial file, journal or lock is left, and no xai-graph folder stays in TMPDIR."""
    rng = random.Random(9)
    photos = photo_folder(tmp_path / "photos", 40)
    images = _images(photos)
    before = digest(photos)
    out = tmp_path / "out"
    env = child_env(tmp_path)
    stages = []
    for i in range(5):
        run = start_cli("explain", MODEL, "-i", photos, "-o", out, "-q", env=env)
        journal = out / ".xai-graph-journal.jsonl"
        if i % 2:  # a random time: in start-up, while instrumenting (~2.5 s), or in the run
            time.sleep(rng.uniform(1.5, 3.5))
        else:  # once a random number of records is in the journal
            records = rng.randint(1, 36)
            wait_for(lambda: journal.exists() and len(journal.read_bytes().splitlines()) >= records, run)
        os.kill(run.proc.pid, signal.SIGKILL)  # (a zombie, if it just finished, takes it quietly)
        killed = finish(run)
        stages.append(
            f"kill {i}: exit {killed.code} after {killed.seconds:.1f} s, "
            f"{len(journal.read_text().splitlines()) if journal.exists() else 'no'} journal records, "
            f"left in TMPDIR {stale_temp(tmp_path / 'tmpdir')}"
        )
        if (out / "predictions.json").exists():  # whatever a kill leaves is consistent
            assert gallery_problems(out, leftover_check=False) == []
        again = run_cli("explain", MODEL, "-i", photos, "-o", out, "-q", env=env)
        expect(again, (0,), explain=True)
        assert gallery_problems(out, images) == [], f"after kill {i}"
        assert stale_temp(tmp_path / "tmpdir") == [], f"after kill {i}"
    assert digest(photos) == before
    print("\n" + "\n".join(stages))


# -- 8. SIGINT and SIGTERM -------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_explain_interrupted_writes_what_is_done(lite0_xai, tmp_path, signum):
    """A signal once the first overlay is on disk: exit 130, `interrupted: N of M images written`,
    predictions.json (marked "interrupted": true) and index.html list the N images, whose files all exist."""
    photos = photo_folder(tmp_path / "photos", 80)
    out = tmp_path / "out"
    run = start_cli("explain", lite0_xai, "-i", photos, "-o", out, env=child_env(tmp_path))
    wait_for(lambda: list(out.glob("*_overlay.*")), run, timeout=60, step=0.01)
    os.kill(run.proc.pid, signum)
    result = finish(run, timeout=60)
    assert result.code == 130, result
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result
    said = re.search(
        r"^interrupted: (\d+) of (\d+) images written to .*predictions\.json and index\.html", result.stderr, re.M
    )
    assert said, result
    written, total = map(int, said.groups())
    assert total == 80 and 0 < written < 80, result
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions.get("interrupted") is True
    done = [r for r in predictions["images"] if r["files"] and not r["error"]]
    assert len(done) == written, (len(done), written)
    assert gallery_problems(out) == []
    assert stale_temp(tmp_path / "tmpdir") == []


@pytest.mark.parametrize("when", ["while saving", "while inserting", "at start-up"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_insert_interrupted_leaves_nothing(tmp_path, signum, when):
    """A signal during insert: exit 130, no traceback, no output, no staging folder."""
    folder = tmp_path / "out"
    folder.mkdir()
    run = start_cli("insert", MODEL, "-o", folder / "x.onnx", env=child_env(tmp_path))
    if when == "while saving":  # the staging folder appears when the model is written
        wait_for(lambda: leftovers(folder), run, step=0.002)
    elif when == "while inserting":  # the model file is read when the work begins
        wait_for(lambda: has_open(run.proc.pid, MODEL.resolve()), run, step=0.0005)
    else:
        time.sleep(0.4)
    assert running(run), "insert finished before the signal: the test needs an earlier signal"
    os.kill(run.proc.pid, signum)
    result = finish(run, timeout=60)
    assert result.code == 130, result
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result
    assert list(folder.iterdir()) == [], "an interrupted insert left files"


# -- 9. read-only and full file systems ----------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs mounted at `path` for the block (the test is skipped where mounting is not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def test_read_only_folder_is_one_line(lite0_xai, tmp_path):
    with tmpfs(tmp_path / "ro", "1m") as ro:
        (ro / "existing").mkdir()
        _read_only(ro)
        for args in (
            ["insert", MODEL, "-o", ro / "x.onnx"],
            ["insert", MODEL, "-o", ro / "x.xml"],
            ["explain", lite0_xai, "-i", PHOTOS[0], "-o", ro / "out", "-q"],
            ["explain", lite0_xai, "-i", PHOTOS[0], "-o", ro / "existing", "-q"],
            ["demo", ro / "out"],
        ):
            expect(invoke(*args), (1,), "Read-only file system", explain=True)
        assert [p.name for p in ro.rglob("*")] == ["existing"]


def test_full_disk_is_one_line_and_leaves_no_part(lite0_xai, tmp_path):
    photos = photo_folder(tmp_path / "photos", 40)  # ~5 MB of results (JPEG overlays, 7x7 maps): more than fits
    with tmpfs(tmp_path / "full", "2m") as full:
        expect(invoke("insert", MODEL, "-o", full / "x.onnx"), (1,), "No space left on device")
        assert list(full.iterdir()) == [], "a failed insert left files on the full disk"
        expect(invoke("insert", MODEL, "-o", full / "x.xml"), (1,), "No space left on device")
        assert list(full.iterdir()) == []
        out = full / "out"
        result = run_cli("explain", lite0_xai, "-i", photos, "-o", out, "-q", env=child_env(tmp_path))
        expect(result, (1, 3), "No space left on device", explain=True)
        assert not list(out.glob(SCRATCH + "-part-*")), "partial files left"
        assert not (out / ".xai-graph.lock").exists()
        if (out / "predictions.json").exists():  # index.html may not fit any more
            records = _records(out)
            absent = [f for r in records.values() for f in r["files"] if not (out / f).is_file()]
            assert absent == [], f"predictions.json lists files that do not exist: {absent}"
            failed = [r["error"] for r in _records(out).values() if r["error"]]
            assert all("\n" not in e and "No space left on device" in e for e in failed), failed
    assert stale_temp(tmp_path / "tmpdir") == []


# -- 10. user errors ---------------------------------------------------------------------------------------------
USAGE_ERRORS = {
    "explain --size 0x0": lambda m, t: ["explain", m, "-i", PHOTOS[0], "-o", t / "o", "--size", "0x0"],
    "explain --size -8x8": lambda m, t: ["explain", m, "-i", PHOTOS[0], "-o", t / "o", "--size=-8x8"],
    "explain --top-k -1": lambda m, t: ["explain", m, "-i", PHOTOS[0], "-o", t / "o", "--top-k", "-1"],
    "insert --map-size 0x0": lambda m, t: ["insert", m, "-o", t / "x.onnx", "--map-size", "0x0"],
    "bench --rounds 0": lambda m, t: ["bench", m, "--rounds", "0"],
    "bench --batch 0": lambda m, t: ["bench", m, "--batch", "0"],
}
USER_ERRORS = {
    "explain -i missing": (lambda m, t: ["explain", m, "-i", t / "missing", "-o", t / "o"], "no such file or folder"),
    "insert -o out.pt": (lambda m, t: ["insert", m, "-o", t / "out.pt"], r"\.onnx"),
    "explain --size on a static model": (
        lambda m, t: ["explain", m, "-i", PHOTOS[0], "-o", t / "o", "--size", "300x300"],
        "--size",
    ),
    "insert a missing model": (lambda m, t: ["insert", t / "nope.onnx", "-o", t / "x.onnx"], "no such file"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_bad_option_values_are_usage_errors(lite0_xai, tmp_path, case):
    result = invoke(*USAGE_ERRORS[case](lite0_xai, tmp_path))
    expect(result, (2,))
    assert "Invalid value" in result.stderr, result
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_errors_are_one_line(lite0_xai, tmp_path, case):
    make, says = USER_ERRORS[case]
    expect(invoke(*make(lite0_xai, tmp_path)), (1,), says)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


UNRUNNABLE = {"custom domain": _m_custom_domain, "opset 30": _opset(30), "batch 0": _input_dim(0, 0)}


@pytest.mark.parametrize("flaw", list(UNRUNNABLE))
def test_unrunnable_models_get_the_same_line_from_every_command(tmp_path, flaw):
    model = onnx.load(str(MODEL))
    UNRUNNABLE[flaw](model, random.Random(0), tmp_path)
    path = tmp_path / "flawed.onnx"
    onnx.save(model, str(path))
    runs = [
        invoke("insert", path, "-o", tmp_path / "x.onnx"),
        invoke("inspect", path),
        invoke("explain", path, "-i", PHOTOS[0], "-o", tmp_path / "out", "--algo", "classwisesaliencymap"),
    ]
    for result in runs:
        expect(result, (1,), explain=True)
    assert len({r.errors[0] for r in runs}) == 1, [r.errors[0] for r in runs]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flawed.onnx"]


def test_duplicate_node_names_are_renamed_and_the_result_runs(tmp_path):
    model = onnx.load(str(MODEL))
    _m_duplicate_name(model, random.Random(0), tmp_path)
    model.graph.node[5].name = model.graph.node[9].name  # a second pair
    path = tmp_path / "twins.onnx"
    onnx.save(model, str(path))
    env = child_env(tmp_path)
    result = run_cli("insert", path, "-o", tmp_path / "x.onnx", env=env)
    expect(result, (0,))
    assert re.search(r"^note: .*node name", result.stderr, re.M), result
    assert loads_in_onnxruntime(tmp_path / "x.onnx") is None
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "x.onnx"), providers=["CPUExecutionProvider"])
    maps = session.run(["saliency_map"], {"image": np.zeros((2, 3, 224, 224), np.float32)})[0]
    assert maps.shape == (2, 1000, 7, 7)
    expect(
        run_cli("explain", tmp_path / "x.onnx", "-i", PHOTOS[1], "-o", tmp_path / "out", "-q", env=env),
        (0,),
        explain=True,
    )
    expect(run_cli("explain", path, "-i", PHOTOS[1], "-o", tmp_path / "out2", "-q", env=env), (0,), explain=True)
    assert gallery_problems(tmp_path / "out", [PHOTOS[1]]) == []
    assert stale_temp(tmp_path / "tmpdir") == []


# -- 11. umask ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o027, 0o022], ids=["027", "022"])
def test_files_get_the_umask_permissions(tmp_path, umask):
    env = child_env(tmp_path)
    expect(run_cli("insert", MODEL, "-o", tmp_path / "x.onnx", env=env, umask=umask), (0,))
    expect(
        run_cli("explain", tmp_path / "x.onnx", "-i", PHOTOS[1], "-o", tmp_path / "out", "-q", env=env, umask=umask),
        (0,),
        explain=True,
    )
    files = [tmp_path / "x.onnx", *(p for p in (tmp_path / "out").iterdir())]
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
    assert oct(stat.S_IMODE((tmp_path / "out").stat().st_mode)) == oct(0o777 & ~umask)


# -- 12. --debug -------------------------------------------------------------------------------------------------
def test_internal_errors_are_one_line_unless_debug(tmp_path, monkeypatch):
    import xai_graph

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(xai_graph, "insert", boom)
    args = ["insert", MODEL, "-o", tmp_path / "x.onnx"]
    plain = invoke(*args)
    assert plain.code == 2 and plain.escaped is None, plain
    assert plain.stderr.count("\n") == 1 and "internal error" in plain.stderr and "boom" in plain.stderr, plain
    assert "Traceback" not in plain.stderr
    for debug in (invoke("--debug", *args), invoke(*args, env={"XAI_GRAPH_DEBUG": "1"})):
        assert debug.code == 2, debug
        assert "Traceback" in debug.stderr and "RuntimeError: boom" in debug.stderr, debug
        assert "internal error" in debug.errors[-1], debug
    assert not (tmp_path / "x.onnx").exists() and leftovers(tmp_path) == []

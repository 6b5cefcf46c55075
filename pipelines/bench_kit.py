"""Build the folder that lets `pipelines/bench_gpu.sh` run the GPU benchmarks on a machine that
cannot reach a package index (a lent GPU machine, an offline cluster node).

    python -m pipelines.bench_kit --out .whl          # here, where pip reaches PyPI
    bash pipelines/bench_gpu.sh extract 512            # there, from the repository root, .whl beside it

Such a machine is assumed to hold a CUDA PyTorch image (torch, torchvision, timm, transformers,
numpy, scipy, scikit-image, OpenCV, onnxruntime, tiktoken, numba, PyYAML, tqdm, pytest). The folder
holds what the extraction needs beyond that:

- the wheels of the other dependencies, at the versions installed here (the tested ones), for the
  target's Python (`--python-version`, 3.12 by default) and x86-64 Linux; openai-whisper ships no
  wheel and is built here. They are repacked so that the folder and the repository fit a small
  transfer limit (`--limit-mib`, 64 by default, counted with the repository's tracked files):
  shared libraries without their debug sections (numcodecs' and gensim's are mostly debug
  information), and without files the project never reads (gensim's and numcodecs' tests and C
  sources, silero-vad's ONNX models);
- `ffmpeg.xz`: the static FFmpeg of imageio-ffmpeg 0.6.0 (FFmpeg 7.0.2, 80 MB, 21 MB compressed;
  the newer wheels' binary is 173 MB), which `VIDEOEXPERTS_FFMPEG` then names;
- `clips/`: demo videos of MSR-VTT's shape (15 s, 30 fps, 320x240; H.264 + AAC; photos with a face
  among them, words on screen, tones, and speech where espeak-ng is installed here) and their
  word2vec file, which the script links many times over into a folder dataset.

PyNvVideoCodec (27 MB, the NVDEC decoder) is added with `--nvdec` where the limit allows.
"""
from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import fnmatch
import hashlib
import importlib.metadata
import io
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import IO

from shared.files import atomic_write, atomic_write_text

__all__ = ['IMAGE_PACKAGES', 'KitError', 'OPTIONAL_MODULES', 'Wheel', 'WHEELS', 'build_kit', 'kit_version', 'main',
           'repack_wheel']

#: the imageio-ffmpeg release whose static FFmpeg the kit carries (newer ones hold a 173 MB binary)
FFMPEG_SOURCE = 'imageio-ffmpeg==0.6.0'
#: pip's platform tags for x86-64 Linux wheels, newest first (pip matches each exactly)
PLATFORMS = ('manylinux_2_35_x86_64', 'manylinux_2_34_x86_64', 'manylinux_2_31_x86_64', 'manylinux_2_28_x86_64',
             'manylinux_2_27_x86_64', 'manylinux_2_24_x86_64', 'manylinux_2_17_x86_64', 'manylinux2014_x86_64',
             'manylinux2010_x86_64', 'manylinux1_x86_64')
_SOURCES = ('*.c', '*.cpp', '*.h', '*.pyx', '*.pxd')
#: what the CUDA PyTorch image of the lent GPU machines holds (read there on 2026-11-17): the kit
#: carries none of these, and a test checks that it carries everything else the extraction imports
IMAGE_PACKAGES = frozenset("""
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
    cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
    execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
    httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
    jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
    lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
    mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
    networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
    nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
    nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
    nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
    optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
    prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
    pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
    pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
    scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
    tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
    wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
#: modules of optional paths the kit leaves out: RapidOCR (`ocr.engine: rapidocr`), Dask (the cluster
#: pipeline's lazy store view), PyNvVideoCodec (`--decoder nvdec`; `--nvdec` adds it)
OPTIONAL_MODULES = ('rapidocr_onnxruntime', 'dask', 'PyNvVideoCodec')


class KitError(RuntimeError):
    """The kit cannot be built as asked (a download failed, the folder would exceed the limit, ...)."""


@dataclasses.dataclass(frozen=True)
class Wheel:
    """One dependency the kit carries.

    Attributes:
        name: its distribution name; the version is the one installed in this environment.
        drop: glob patterns of members left out of the wheel (never read by the project).
        build: the project publishes no wheel: build one here from its source distribution.
    """

    name: str
    drop: tuple[str, ...] = ()
    build: bool = False


#: the dependencies a CUDA PyTorch image lacks, for `python -m extract` with every expert
WHEELS: tuple[Wheel, ...] = (
    Wheel('decord'),
    Wheel('zarr'),
    Wheel('numcodecs', drop=('numcodecs/tests/*', *_SOURCES)),
    Wheel('donfig'),
    Wheel('google-crc32c'),
    Wheel('easyocr'),
    Wheel('python-bidi'),
    Wheel('pyclipper'),
    Wheel('shapely'),
    Wheel('openai-whisper', build=True),
    Wheel('more-itertools'),
    # load_silero_vad() reads the TorchScript model; the ONNX and safetensors copies are 10 MB more
    Wheel('silero-vad', drop=('silero_vad/data/*.onnx', 'silero_vad/data/*.safetensors')),
    Wheel('gensim', drop=('gensim/test/*', *_SOURCES)),
    Wheel('smart-open'),
    Wheel('facenet-pytorch'),
)
NVDEC = Wheel('pynvvideocodec')


def _stripped(data: bytes, strip: str) -> bytes:
    """A shared library's bytes without its debug sections (`strip --strip-debug`): many wheels ship
    them, numcodecs' blosc module 14.5 MB of which 1.4 MB is code. The original is kept where strip
    fails, saves under a quarter, or changes what the loader maps: on libraries that auditwheel's
    patchelf rewrote (decord's), strip moved the load segments so that the loader refused them
    ("ELF load command address/offset not page-aligned")."""
    with tempfile.TemporaryDirectory(prefix='videoexperts-strip-') as tmp:
        path = Path(tmp) / 'lib.so'
        path.write_bytes(data)
        if subprocess.run([strip, '--strip-debug', str(path)], capture_output=True).returncode:
            return data  # not an object file strip knows
        new = path.read_bytes()
    if len(new) >= 0.75 * len(data):
        return data
    before, after = _load_segments(data), _load_segments(new)
    # debug sections are never loaded: the segments' addresses, sizes and rights must stay as they were
    same = before is not None and after is not None and [s[1:] for s in before] == [s[1:] for s in after]
    return new if same and all(_aligned(*s[:3]) for s in after) else data


def _load_segments(elf: bytes) -> list[tuple[int, int, int, int, int]] | None:
    """(offset, address, alignment, memory size, flags) of each load segment of a 64-bit
    little-endian ELF file; None for another file or a header that cannot be read."""
    if elf[:4] != b'\x7fELF' or elf[4] != 2 or elf[5] != 1:
        return None
    try:
        phoff, = struct.unpack_from('<Q', elf, 0x20)
        entsize, count = struct.unpack_from('<HH', elf, 0x36)
        out = []
        for i in range(count):
            kind, flags, offset, vaddr, _paddr, _filesz, memsz, align = struct.unpack_from(
                '<IIQQQQQQ', elf, phoff + i * entsize)
            if kind == 1:  # PT_LOAD
                out.append((offset, vaddr, align, memsz, flags))
        return out
    except struct.error:
        return None


def _aligned(offset: int, vaddr: int, align: int, page: int = 4096) -> bool:
    """glibc's checks of a load segment: its address and file offset agree modulo the page size
    (2.35 on) and modulo its own alignment (before)."""
    return (vaddr - offset) % page == 0 and (align <= 1 or (vaddr - offset) % align == 0)


def _record_hash(data: bytes) -> str:
    return 'sha256=' + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()


def repack_wheel(src: Path, out: Path, drop: tuple[str, ...] = (), strip: bool = True) -> int:
    """Copy the wheel `src` to `out` without the members matching `drop` and, with `strip` (where
    binutils' `strip` is installed), its shared libraries without debug sections; its RECORD lists
    what is left, with the changed files' new hashes and sizes. Returns the members left out."""
    strip_exe = shutil.which('strip') if strip else None
    dropped = 0
    changed: dict[str, bytes] = {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        kept = set()
        record = None
        for info in zin.infolist():
            if any(fnmatch.fnmatch(info.filename, p) for p in drop):
                dropped += 1
                continue
            if info.filename.count('/') == 1 and info.filename.endswith('.dist-info/RECORD'):
                record = info
                continue
            data = zin.read(info)
            if strip_exe and re.search(r'\.so(\.[0-9]+)*$', info.filename):
                new = _stripped(data, strip_exe)
                if new != data:
                    changed[info.filename] = data = new
            kept.add(info.filename)
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        if record is not None:
            rows = []
            for row in csv.reader(io.StringIO(zin.read(record).decode('utf-8'))):
                if row and row[0] in changed:
                    row = [row[0], _record_hash(changed[row[0]]), str(len(changed[row[0]]))]
                if row and (row[0] in kept or row[0] == record.filename):
                    rows.append(row)
            buf = io.StringIO()
            csv.writer(buf, lineterminator='\n').writerows(rows)
            zout.writestr(record, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return dropped


def _installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise KitError(f'{name} is not installed here: the kit takes the versions of this environment '
                       '(make setup installs them)') from None


def _pip(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, '-m', 'pip', *args, '--quiet', '--disable-pip-version-check'],
                          capture_output=True, text=True)
    if proc.returncode:
        raise KitError(f'pip {args[0]} {args[-1]} failed: {(proc.stderr or proc.stdout).strip()[-800:]}')


def _download(spec: str, dest: Path, python_version: str) -> Path:
    """The one wheel of `spec` for the target interpreter and x86-64 Linux, saved in `dest`."""
    before = set(dest.iterdir())
    platforms = [a for p in PLATFORMS for a in ('--platform', p)]
    _pip(['download', '--no-deps', '--only-binary=:all:', '--python-version', python_version, '--implementation',
          'cp', *platforms, '-d', str(dest), spec])
    new = sorted(set(dest.iterdir()) - before)
    if len(new) != 1:
        raise KitError(f'pip download {spec} gave {len(new)} files, not one wheel')
    return new[0]


def _build(spec: str, dest: Path) -> Path:
    """A wheel built here from `spec`'s source distribution (pure Python, so any target takes it)."""
    before = set(dest.iterdir())
    _pip(['wheel', '--no-deps', '-w', str(dest), spec])
    new = sorted(set(dest.iterdir()) - before)
    if len(new) != 1 or not new[0].name.endswith('-py3-none-any.whl'):
        raise KitError(f'pip wheel {spec} gave {[p.name for p in new]}, not one pure-Python wheel')
    return new[0]


def _ffmpeg(dest: Path, tmp: Path) -> Path:
    """FFMPEG_SOURCE's static binary, xz-compressed, as `dest` (kept from an earlier build of the
    same source: compressing takes minutes)."""
    source = dest.with_name(dest.name + '.source')
    if dest.is_file() and source.is_file() and source.read_text().strip() == FFMPEG_SOURCE:
        return dest
    wheel = _download(FFMPEG_SOURCE, tmp, '3.12')  # a py3-none wheel: any target interpreter
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if fnmatch.fnmatch(n, 'imageio_ffmpeg/binaries/ffmpeg-linux-x86_64*')]
        if len(names) != 1:
            raise KitError(f'{wheel.name} holds no single FFmpeg binary ({names})')
        atomic_write(dest, lambda out: _compress(z, names[0], out))
    atomic_write_text(source, FFMPEG_SOURCE + '\n')
    return dest


def _compress(z: zipfile.ZipFile, name: str, out: IO[bytes]) -> None:
    with z.open(name) as src, lzma.open(out, 'wb', preset=9) as xz:
        shutil.copyfileobj(src, xz, 1 << 20)


def _clips(dest: Path, videos: int, seed: int) -> Path:
    from shared.datasets.demo import DemoCfg, generate

    # MSR-VTT's clips are 10-30 s (15 s typical) at about 30 fps; no clip without audio, as most of MSR-VTT's have it
    cfg = DemoCfg(videos=videos, seed=seed, fps=30, min_duration=15.0, max_duration=15.0, no_audio_rate=0.0)
    return generate(dest, cfg, progress=False)


def _tracked_bytes(repo: Path) -> int:
    """The size of the repository's tracked files (what travels beside the kit); 0 outside a git checkout."""
    try:
        out = subprocess.run(['git', '-C', str(repo), 'ls-files', '-z'], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum((repo / os.fsdecode(p)).stat().st_size for p in out.split(b'\0') if p and (repo / os.fsdecode(p)).is_file())


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob('*') if p.is_file() and not p.is_symlink())


def build_kit(out: Path, python_version: str = '3.12', clips: int = 16, nvdec: bool = False,
              limit_mib: float = 64.0, repo: Path | None = None, seed: int = 0) -> dict[str, int]:
    """Write the kit into `out` (replacing what a previous build left there); returns each part's size
    in bytes. Raises KitError when a part cannot be had or the whole exceeds `limit_mib` together
    with `repo`'s tracked files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'KIT').unlink(missing_ok=True)  # written last: a build that fails leaves no kit bench_gpu.sh takes
    for old in out.glob('*.whl'):
        old.unlink()
    if (out / 'clips').exists():
        shutil.rmtree(out / 'clips')
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix='videoexperts-kit-') as tmp_name:
        tmp = Path(tmp_name)
        for wheel in WHEELS + ((NVDEC,) if nvdec else ()):
            spec = f'{wheel.name}=={_installed_version(wheel.name)}' if wheel is not NVDEC else NVDEC.name
            got = _build(spec, tmp) if wheel.build else _download(spec, tmp, python_version)
            target = out / got.name
            repack_wheel(got, target, wheel.drop)
            sizes[got.name] = target.stat().st_size
            print(f'{got.name}: {sizes[got.name] / 2**20:.1f} MiB', file=sys.stderr)
        ffmpeg_dir = tmp / 'ffmpeg'
        ffmpeg_dir.mkdir()
        sizes['ffmpeg.xz'] = _ffmpeg(out / 'ffmpeg.xz', ffmpeg_dir).stat().st_size
    _clips(out / 'clips', clips, seed)
    sizes['clips'] = _size(out / 'clips')
    here = Path(__file__).resolve().parents[1] if repo is None else repo
    sizes['repository'] = _tracked_bytes(here)
    total = _size(out) + sizes['repository']  # the folder as it travels, whatever else lies in it
    if total > limit_mib * 2**20:
        biggest = ', '.join(f'{k} {v / 2**20:.1f}' for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:4])
        raise KitError(f'the kit and the repository come to {total / 2**20:.1f} MiB, over the {limit_mib:g} MiB '
                       f'limit (largest, MiB: {biggest}): leave out --nvdec, or make fewer --clips')
    atomic_write_text(out / 'KIT', f'kit {kit_version()}\npython {python_version}, {clips} clips\n'
                      + ''.join(f'{k}\t{v}\n' for k, v in sizes.items()))
    return sizes


def kit_version() -> str:
    """What the kit's first line records, and bench_gpu.sh checks: the first 12 hex digits of this
    file's SHA-256 (a kit built by another version of this module may be broken, and is refused)."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m pipelines.bench_kit', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n')[1] + '\n\nBENCHMARKS.md says what the GPU machine runs.')
    p.add_argument('--out', type=Path, default=Path('.whl'), help='the kit folder (default: .whl, gitignored)')
    p.add_argument('--python-version', default='3.12', help="the target machine's Python, as 3.12 (default)")
    p.add_argument('--clips', type=int, default=16, help='distinct 15-s demo clips (default: 16, about 6 MB)')
    p.add_argument('--nvdec', action='store_true', help='add PyNvVideoCodec (27 MB) for --decoder nvdec')
    p.add_argument('--limit-mib', type=float, default=64.0,
                   help='what may travel: the kit and the tracked files together (default: 64)')
    args = p.parse_args(argv)
    if args.clips < 3:
        p.error('--clips must be at least 3 (the demo generator puts one in each split part)')
    try:
        sizes = build_kit(args.out, args.python_version, args.clips, args.nvdec, args.limit_mib)
    except KitError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    kit = _size(args.out)
    print(f'{args.out}: {kit / 2**20:.1f} MiB ({(kit + sizes["repository"]) / 2**20:.1f} MiB with the '
          f'repository); carry it and run: bash pipelines/bench_gpu.sh extract')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

"""The GPU benchmark kit: repacked wheels install, every dependency of the extraction travels."""
from __future__ import annotations

import ast
import base64
import csv
import hashlib
import io
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from pipelines.bench_kit import IMAGE_PACKAGES, NVDEC, OPTIONAL_MODULES, WHEELS, repack_wheel

ROOT = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def _make_wheel(path: Path, extension: Path) -> None:
    files: dict[str, str | bytes] = {'tool/__init__.py': 'VALUE = 1\n', 'tool/tests/test_big.py': 'x = 1\n', 'tool/_speed.c': 'int x;\n',
             'tool-1.0.dist-info/METADATA': 'Metadata-Version: 2.1\nName: tool\nVersion: 1.0\n',
             'tool-1.0.dist-info/WHEEL': 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n'}
    files[f'tool/{extension.name}'] = extension.read_bytes()
    record = ''.join(f'{name},,\n' for name in files) + 'tool-1.0.dist-info/RECORD,,\n'
    with zipfile.ZipFile(path, 'w') as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr('tool-1.0.dist-info/RECORD', record)


@pytest.mark.skipif(shutil.which('strip') is None, reason="needs binutils' strip")
def test_a_repacked_wheel_installs_without_the_dropped_files_and_debug_sections(tmp_path: Path) -> None:
    import markupsafe._speedups as ext  # a compiled module built with debug sections, as many wheels ship

    extension = Path(ext.__file__)
    src, out = tmp_path / 'src' / 'tool-1.0-py3-none-any.whl', tmp_path / 'tool-1.0-py3-none-any.whl'
    src.parent.mkdir()
    _make_wheel(src, extension)
    assert repack_wheel(src, out, ('tool/tests/*', '*.c')) == 2
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        record = {row[0]: row for row in csv.reader(io.StringIO(z.read('tool-1.0.dist-info/RECORD').decode()))}
        stripped = z.read(f'tool/{extension.name}')
    assert 'tool/tests/test_big.py' not in names and 'tool/_speed.c' not in names
    assert 'tool/tests/test_big.py' not in record and 'tool/_speed.c' not in record and 'tool/__init__.py' in record
    assert len(stripped) < extension.stat().st_size / 2
    digest = base64.urlsafe_b64encode(hashlib.sha256(stripped).digest()).rstrip(b'=').decode()
    assert record[f'tool/{extension.name}'][1:] == [f'sha256={digest}', str(len(stripped))]
    target = tmp_path / 'site'
    proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--target',
                           str(target), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert 'RECORD' not in proc.stderr  # no complaint about files it lists but lacks
    assert (target / 'tool' / '__init__.py').read_text() == 'VALUE = 1\n'
    assert not (target / 'tool' / 'tests').exists()
    check = 'import tool._speedups as s; print(s._escape_inner("<a & b>"))'
    assert subprocess.run([sys.executable, '-c', check], capture_output=True, text=True, check=True,
                          cwd=target).stdout == '&lt;a &amp; b&gt;\n'  # the stripped module still loads and works


def _third_party_modules(packages: list[str]) -> set[str]:
    """Top-level modules that the code under `packages` imports, other than its own and the standard library."""
    own = {'shared', 'extract', 'train', 'pipelines'}
    found = set()
    for package in packages:
        for path in (ROOT / package).rglob('*.py'):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found |= {a.name.split('.')[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split('.')[0])
    return {m for m in found - own if m not in sys.stdlib_module_names}


def _requirements(dist: str, seen: set[str], stop: set[str]) -> None:
    """`dist` and what it requires on the target (Linux, Python 3.12; no extras), transitively, into
    `seen`; the requirements of a package in `stop` (the image's, met there) are not followed."""
    if _norm(dist) in seen:
        return
    seen.add(_norm(dist))
    if _norm(dist) in stop:
        return
    try:
        requires = importlib.metadata.requires(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return
    target = {'python_version': '3.12', 'python_full_version': '3.12.3', 'sys_platform': 'linux',
              'platform_system': 'Linux', 'platform_machine': 'x86_64', 'os_name': 'posix',
              'implementation_name': 'cpython', 'platform_python_implementation': 'CPython', 'extra': ''}
    for text in requires:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(target):
            _requirements(req.name, seen, stop)


def test_the_kit_carries_every_dependency_of_the_extraction_the_image_lacks() -> None:
    """A new import in extract/ or shared/ (or a new requirement of one) that the CUDA image lacks
    must travel in the kit, or the GPU run fails on a machine that cannot fetch it."""
    modules = _third_party_modules(['extract', 'shared']) - set(OPTIONAL_MODULES)
    by_module = importlib.metadata.packages_distributions()
    image = {_norm(n) for n in IMAGE_PACKAGES}
    carried = {_norm(w.name) for w in WHEELS} | {'imageio-ffmpeg'}  # its FFmpeg travels as ffmpeg.xz
    needed: set[str] = set()
    for module in sorted(modules):
        dists = by_module.get(module)
        assert dists, f'{module} is imported by extract/ or shared/ but no installed distribution provides it'
        # cv2 comes from opencv-python or opencv-python-headless: the one the image or kit has will do
        _requirements(next((d for d in dists if _norm(d) in image | carried), dists[0]), needed, image)
    missing = sorted(needed - image - carried)
    assert not missing, f'neither in the CUDA image nor in the kit: {missing}'
    assert not carried & image, 'the kit carries a package the image already has'
    assert NVDEC.name not in carried


@pytest.mark.skipif(shutil.which('strip') is None, reason="needs binutils' strip")
def test_a_library_whose_load_segments_strip_would_move_is_kept_whole() -> None:
    """decord's libdecord.so (rewritten by auditwheel's patchelf): `strip --strip-debug` made it 3.9 MB
    and the loader refused it ("ELF load command address/offset not page-aligned")."""
    import decord

    from pipelines.bench_kit import _stripped

    lib = Path(decord.__file__).parent / 'libdecord.so'
    data = lib.read_bytes()
    assert _stripped(data, shutil.which('strip')) == data


@pytest.mark.parametrize('args, kit, words', [
    (['nonsense'], None, 'usage'),
    ([], None, 'no kit'),
    (['extract', 'many'], None, 'VIDEOS must be a positive whole number'),
    (['extract', '8'], 'kit 000000000000\n', 'built by another version of pipelines/bench_kit.py'),
])
def test_the_device_script_refuses_bad_arguments_and_a_missing_or_stale_kit(tmp_path: Path, args: list[str],
                                                                          kit: str | None, words: str) -> None:
    script = ROOT / 'pipelines' / 'bench_gpu.sh'
    assert subprocess.run(['bash', '-n', str(script)]).returncode == 0
    if kit is not None:
        (tmp_path / 'kit').mkdir()
        (tmp_path / 'kit' / 'KIT').write_text(kit)
    proc = subprocess.run(['bash', str(script), *args], capture_output=True, text=True,
                          env={'PATH': '/usr/bin:/bin', 'KIT': str(tmp_path / 'kit'), 'OUT': str(tmp_path / 'out')})
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr


def test_the_kit_names_the_version_of_its_builder(tmp_path: Path) -> None:
    """bench_gpu.sh compares the kit's first line with the builder it finds beside it."""
    from pipelines.bench_kit import kit_version

    digest = subprocess.run(['sha256sum', str(ROOT / 'pipelines' / 'bench_kit.py')], capture_output=True, text=True,
                            check=True).stdout[:12]
    assert kit_version() == digest

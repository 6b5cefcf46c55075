"""The search server (issue 25 item 3) over a real index of the demo videos: JSON API, page, video
files with range requests, bad input refused with a 4xx while the server goes on serving, and the
page in headless Chromium."""
from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from shared.datasets import load_manifest
from train.captions import StopWordsRemoved, SubwordCaptions, WordTokenizer
from train.index import main as index_main
from train.main import main as train_main

from tests.train.test_train import _args, _config


@pytest.fixture(scope='module')
def served(demo_stores: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """A CE run of one epoch on the demo stores, its index of all 60 videos, and the app over them."""
    from fastapi.testclient import TestClient

    from pipelines.serve import Collection, create_app

    data, features = demo_stores
    tmp = tmp_path_factory.mktemp('serve')
    assert train_main(_args(data, features, _config(tmp, 'ce', epochs=1), tmp / 'ce')) == 0
    run, index = tmp / 'ce' / 'seed0', tmp / 'ce' / 'seed0' / 'index' / 'demo'  # train.index's default folder
    assert index_main(['--run', str(tmp / 'ce'), '--dataset', 'demo', '--data-root', str(data), '--features-root',
                       str(features)]) == 0
    collection = Collection(run, index, data)
    return collection, TestClient(create_app(collection), base_url='http://127.0.0.1:8000'), load_manifest('demo', data)


@pytest.mark.slow
def test_search_api_page_thumbnails_and_videos(served) -> None:
    collection, client, manifest = served
    caption = manifest.captions[manifest.video_ids[3]][0]
    r = client.get('/search', params={'q': caption, 'k': 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body['results']) == 5 and set(body['weights']) == {'object', 'scene', 'audio'}
    scores = [h['score'] for h in body['results']]
    assert scores == sorted(scores, reverse=True)
    for hit in body['results']:  # each result's weights: the query's, over the experts the video has
        assert abs(sum(hit['weights'].values()) - 1) < 1e-3 and {'object', 'scene'} <= set(hit['weights'])
    assert client.get(body['results'][0]['thumb']).headers['content-type'] == 'image/jpeg'
    assert '<input id="q"' in client.get('/').text

    first = body['results'][0]
    like = client.get('/similar', params={'id': first['id'], 'k': 4}).json()['results']
    assert len(like) == 4 and first['id'] not in [h['id'] for h in like]

    whole = client.get('/video', params={'path': first['video']})
    assert whole.status_code == 200 and whole.headers['accept-ranges'] == 'bytes'
    part = client.get('/video', params={'path': first['video']}, headers={'Range': 'bytes=10-109'})
    assert part.status_code == 206 and part.content == whole.content[10:110]
    assert part.headers['content-range'] == f'bytes 10-109/{len(whole.content)}'
    for url, params in (('/video', {'path': first['video']}), (first['thumb'], {}), ('/', {})):
        head = client.head(url, params=params)  # was 405
        assert head.status_code == 200 and head.content == b'' and int(head.headers['content-length']) > 0, url
    assert client.head('/video', params={'path': first['video']}).headers['content-length'] == str(len(whole.content))


@pytest.mark.slow
def test_bad_input_is_a_clear_4xx_and_the_server_goes_on(served, tmp_path: Path) -> None:
    collection, client, manifest = served
    outside = tmp_path / 'secret.mp4'
    outside.write_bytes(b'not for you')
    link = collection.root / collection.paths[7]  # an indexed video's file replaced by a symlink that leads out
    kept = link.rename(tmp_path / 'kept.mp4')
    link.symlink_to(outside)
    thumb = collection.thumbs / '5.jpg'  # and a thumbnail (served as image/jpeg whatever it led to)
    kept_thumb = thumb.rename(tmp_path / 'kept.jpg')
    thumb.symlink_to(outside)
    assert (collection.root / 'demo.json').is_file()  # a file of the root, but no video of the index
    try:
        bad = {
            ('/search', (('q', ''),)): (400, 'empty'),
            ('/search', (('q', 'zzzzqqq xxyy'),)): (400, 'word vector'),
            ('/search', (('q', 'a cat'), ('k', '0'))): (400, 'k must be between 1 and 100'),
            ('/search', (('q', 'a cat'), ('k', '101'))): (400, 'k must be between 1 and 100'),
            ('/similar', (('id', 'no-such-video'),)): (404, 'no video'),
            ('/video', (('path', '../../etc/passwd'),)): (403, 'escapes'),
            ('/video', (('path', str(outside)),)): (403, 'relative'),
            ('/video', (('path', collection.paths[7]),)): (403, 'leads outside'),
            ('/video', (('path', 'nothing_here.mp4'),)): (404, 'no video'),
            ('/video', (('path', ''),)): (404, 'no video path given'),  # was 403 'must be relative'
            ('/video', (('path', 'demo.json'),)): (404, 'no video'),
            ('/video', (('path', 'videos/../demo.json'),)): (404, 'no video'),
            ('/thumb/100000', ()): (404, 'no thumbnail'),
            ('/thumb/5', ()): (403, 'thumbnail 5 leads outside'),
        }
        for (path, params), (code, words) in bad.items():
            r = client.get(path, params=dict(params))
            assert r.status_code == code and words in r.json()['detail'], (path, params, r.status_code, r.text)
            # probe 12: the details named the data root and the index folder of the machine to any client
            assert str(collection.root) not in r.text and str(collection.thumbs.parent) not in r.text, r.text
            assert client.get('/search', params={'q': 'a cat', 'k': 2}).status_code == 200  # still serving
        assert client.get('/search', params={'q': 'a cat', 'k': 'many'}).status_code == 422
    finally:
        link.unlink()
        kept.rename(link)
        thumb.unlink()
        kept_thumb.rename(thumb)


@pytest.mark.slow
def test_an_index_of_an_older_checkpoint_state_is_not_served(served) -> None:
    from pipelines.serve import Collection
    from shared.config import ConfigError
    from train.runs import load_run

    from tests.train.test_index import _retrain_in_place

    collection, _, manifest = served
    run, index = collection.thumbs.parents[2], collection.thumbs.parent
    checkpoint = load_run(run).checkpoint
    saved = checkpoint.read_bytes()
    try:
        _retrain_in_place(checkpoint)
        with pytest.raises(ConfigError, match=r'was made from another state of .*--overwrite'):
            Collection(run, index, manifest.root.parent)
    finally:
        checkpoint.write_bytes(saved)


def test_a_query_of_words_outside_a_run_vocabulary_is_refused() -> None:
    """Runs with a word-level tokenizer (the demo's MMT and support-set) see [UNK] only: any such query ranks alike."""
    captions = SubwordCaptions('bert', 8, words=WordTokenizer(['cat', 'moon']))
    assert captions.knows('a cat') and not captions.knows('zzzzqqq xxyy')
    # data.stop_words: remove: the vocabulary is asked of the words the model sees, without stop words
    removed = StopWordsRemoved(SubwordCaptions('bert', 8, words=WordTokenizer(['cat', 'moon', 'the'])))
    assert removed.knows('the cat') and not removed.knows('zzzzqqq xxyy') and not removed.knows('the')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_page_in_headless_chromium(served, tmp_path: Path) -> None:
    """Type a query, see k thumbnails, click one and see its video load; the screenshot is kept as
    tests/artifacts/search_page.png (and in the test's tmp_path)."""
    driver_path, browser = shutil.which('chromedriver'), shutil.which('chromium')
    if not (driver_path and browser):
        pytest.skip('chromium and chromium-driver are not installed (make setup installs them)')
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from pipelines.serve import create_app

    collection, _, manifest = served
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(collection), host='127.0.0.1', port=port, log_level='warning'))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1280,1000',
                '--autoplay-policy=no-user-gesture-required'):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.1)
        driver.get(f'http://127.0.0.1:{port}/')
        wait = WebDriverWait(driver, 30)
        driver.find_element(By.ID, 'k').clear()
        driver.find_element(By.ID, 'k').send_keys('6')
        driver.find_element(By.ID, 'q').send_keys(manifest.captions[manifest.video_ids[0]][0] + '\n')
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.hit img')) >= 6)
        wait.until(lambda d: all(d.execute_script('return arguments[0].complete && arguments[0].naturalWidth > 0', i)
                                 for i in d.find_elements(By.CSS_SELECTOR, '.hit img')))
        assert 'mixture weights of the query' in driver.find_element(By.ID, 'weights').text
        driver.find_elements(By.CSS_SELECTOR, '.hit')[1].click()
        video = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#player video'))[0]
        wait.until(lambda d: d.execute_script('return arguments[0].readyState', video) >= 1)  # metadata loaded
        assert driver.execute_script('return arguments[0].duration', video) > 0
        shot = driver.get_screenshot_as_png()
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(10)
    (tmp_path / 'search_page.png').write_bytes(shot)
    artifacts = Path(__file__).resolve().parents[1] / 'artifacts'
    artifacts.mkdir(exist_ok=True)
    (artifacts / 'search_page.png').write_bytes(shot)


@pytest.mark.slow
def test_serve_finds_an_index_by_its_dataset(served, capsys: pytest.CaptureFixture) -> None:
    """--dataset reads the folder that train.index writes without --out (the fixture's index), in the
    first seed of a run of several; a dataset that was not indexed is named by that folder."""
    from pipelines.serve import main as serve_main

    collection, _, manifest = served
    run = collection.thumbs.parents[2]
    assert collection.thumbs.parent == run / 'index' / 'demo'
    assert serve_main(['--run', str(run.parent), '--dataset', 'msrvtt', '--data-root', str(manifest.root.parent)]) == 1
    err = capsys.readouterr().err
    assert err == f'error: no embedding store at {run / "index" / "msrvtt" / "embeddings.zarr"}: make it with ' \
                  'python -m train.index\n', err


def test_serve_refuses_what_is_not_a_run_or_an_index(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    from pipelines.serve import main as serve_main

    threads = torch.get_num_threads()
    assert serve_main(['--run', str(tmp_path / 'nothing'), '--index', str(tmp_path)]) == 1
    assert torch.get_num_threads() == threads  # a caller's later work (in-process training) keeps its threads
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'not a run directory' in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize('port', ['70000', '-1'])
def test_a_port_out_of_range_is_one_line_before_anything_loads(port: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """Probe 7: --port 70000 loaded the collection, then uvicorn died with an OverflowError traceback."""
    from pipelines.serve import main as serve_main

    assert serve_main(['--run', str(tmp_path / 'nothing'), '--index', str(tmp_path), '--port', port]) == 1
    err = capsys.readouterr().err
    assert err == f'error: --port {port}: give a port from 0 to 65535\n', err


def test_the_api_schema_and_its_docs_page_are_served() -> None:
    """Probe 7: /openapi.json (and so /docs) answered 500: the routes' FileResponse annotations, strings
    under `from __future__ import annotations`, could not be resolved. The schema needs no collection."""
    from typing import cast

    from fastapi.testclient import TestClient

    from pipelines.serve import Collection, create_app

    client = TestClient(create_app(cast(Collection, None)), raise_server_exceptions=False, base_url='http://localhost')
    r = client.get('/openapi.json')
    assert r.status_code == 200, r.text
    assert {'/', '/search', '/similar', '/thumb/{row}', '/video'} <= set(r.json()['paths'])
    assert client.get('/docs').status_code == 200


@pytest.mark.parametrize('host, allowed, answered, refused', [
    ('127.0.0.1', (), ['127.0.0.1:8000', 'localhost:8000', 'LOCALHOST', '[::1]:8000'],
     ['evil.example:8000', 'evil.example', '127.0.0.1.evil.example', '', '[::1]evil']),
    ('localhost', ('search.lab.org',), ['localhost:8000', 'search.lab.org', 'search.lab.org:443'], ['lab.org']),
    ('::1', ('*',), ['evil.example'], []),
    ('0.0.0.0', (), ['evil.example', '10.0.0.7:8000'], []),  # exposed on purpose: any name, as before
    ('0.0.0.0', ('search.lab.org',), ['search.lab.org'], ['10.0.0.7:8000']),
])
def test_a_loopback_server_answers_only_its_own_host_names(host: str, allowed: tuple[str, ...], answered: list[str],
                                                            refused: list[str]) -> None:
    """DNS rebinding: a page of evil.example whose name then resolves to 127.0.0.1 made the visitor's
    browser query the collection, see its thumbnails and fetch its videos (the server answered any Host)."""
    from typing import cast

    from fastapi.testclient import TestClient

    from pipelines.serve import Collection, ServeCfg, create_app

    client = TestClient(create_app(cast(Collection, None), ServeCfg(host, allowed_hosts=allowed)))
    for name in answered:
        assert client.get('/', headers={'host': name}).status_code == 200, name
    for name in refused:
        r = client.get('/', headers={'host': name})
        assert r.status_code == 400 and '--allowed-host' in r.json()['detail'], (name, r.text)


@pytest.mark.slow
def test_the_command_train_index_prints_serves_the_index(served, demo_stores: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve it: ...` left out --data-root: run from anywhere but beside ./data (the demo's own DATA_ROOT=...), it
    stopped with 'word vectors .../data/demo/word2vec.bin not found'."""
    import shlex

    import torch
    import uvicorn

    from pipelines.serve import main as serve_main

    collection, _, _ = served
    data, features = demo_stores
    index = collection.thumbs.parent  # the fixture's run/index/demo, train.index's default folder
    run = collection.thumbs.parents[2]
    capsys.readouterr()
    assert index_main(['--run', str(run), '--dataset', 'demo', '--data-root', str(data), '--features-root',
                       str(features), '--out', str(index)]) == 0  # complete: the index again, and the line
    out = capsys.readouterr().out
    assert f'60 videos indexed in {index}' in out, out  # count_media's words: stills are 'still images'
    line = [s for s in out.splitlines() if s.startswith('serve it: ')][-1]
    argv = shlex.split(line.removeprefix('serve it: '))
    assert argv[:3] == ['python', '-m', 'pipelines.serve']
    monkeypatch.chdir(tmp_path)  # no ./data here
    served_apps = []
    monkeypatch.setattr(uvicorn, 'run', lambda app, **kw: served_apps.append(app))
    # serving sets one torch thread for the process: given back, or a later in-process training in this
    # pytest process rounds otherwise than its subprocess twin (test_killed_training_resumes_to_the_same_result)
    monkeypatch.setattr(torch, 'set_num_threads', lambda n: None)
    assert serve_main(argv[3:]) == 0, capsys.readouterr().err
    assert len(served_apps) == 1


def test_a_query_whose_known_words_come_after_the_encoder_cut_is_refused() -> None:
    """Probe 12: the vocabulary check read the whole query while the model sees its first max_words ids:
    30 unknown words, then 'cat', passed it and searched with [CLS] + [UNK] * 28 + [SEP], the same
    embedding as any query of unknown words (a 200 with meaningless results)."""
    from train.search import encode_query

    captions = SubwordCaptions('bert', 8, words=WordTokenizer(['cat', 'moon']))
    late = 'zzzz ' * 30 + 'cat'
    assert captions.knows('zzzz cat') and not captions.knows(late)
    with pytest.raises(ValueError, match="no word of this query is in the run's vocabulary"):
        encode_query(None, captions, late)  # type: ignore[arg-type]  # refused before the model is asked
    t5 = SubwordCaptions('t5', 4, words=WordTokenizer(['cat']))  # no [CLS]: max_words - 1 words, then [EOS]
    assert t5.knows('zzzz zzzz cat') and not t5.knows('zzzz zzzz zzzz cat')


def test_a_parameter_of_the_wrong_type_is_one_line_of_detail() -> None:
    """Probe 12: FastAPI's 422 detail was a list of error objects, which the page showed as '[object Object]'
    (a k box left empty sends k=); every 4xx of the server is now one line. Validation runs before any
    route does: no collection needed."""
    from typing import cast

    from fastapi.testclient import TestClient

    from pipelines.serve import Collection, create_app

    client = TestClient(create_app(cast(Collection, None)), raise_server_exceptions=False, base_url='http://localhost')
    for url, params, words in (('/search', {'q': 'a cat', 'k': ''}, "query k: Input should be a valid integer"),
                               ('/search', {'q': 'a cat', 'k': 'x' * 500}, "(got 'xxxx"),
                               ('/similar', {}, 'query id: Field required'),
                               ('/video', {}, 'query path: Field required'),
                               ('/thumb/0.jpg', {}, "path row: Input should be a valid integer")):
        r = client.get(url, params=params)
        detail = r.json()['detail']
        assert r.status_code == 422 and isinstance(detail, str) and words in detail, (url, r.text)
        assert len(detail) < 200 and '\n' not in detail, detail


@pytest.mark.slow
def test_an_index_whose_videos_have_moved_is_served_with_a_warning(served, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe 12: the videos are played from the folder the index recorded, not --data-root: after the data
    root moved, every result's video was a 404 and nothing said why."""
    import json

    import torch
    import uvicorn

    from pipelines.serve import main as serve_main

    collection, _, manifest = served
    run, index = collection.thumbs.parents[2], tmp_path / 'index'
    shutil.copytree(collection.thumbs.parent, index)
    meta = index / 'embeddings.zarr' / 'zarr.json'
    doc = json.loads(meta.read_text())
    doc['attributes']['video_root'] = str(tmp_path / 'moved')
    meta.write_text(json.dumps(doc))
    monkeypatch.setattr(uvicorn, 'run', lambda app, **kw: None)
    monkeypatch.setattr(torch, 'set_num_threads', lambda n: None)
    assert serve_main(['--run', str(run), '--index', str(index), '--data-root', str(manifest.root.parent)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f'warning: the videos of this index were in {tmp_path / "moved"}, which is not there now') \
        and f'--out {index} --overwrite --dataset demo --data-root ROOT' in err and err.count('\n') == 1, err


@pytest.mark.slow
def test_search_refuses_a_gallery_of_another_state_of_its_checkpoint(served, tmp_path: Path) -> None:
    """Probe 12: a resumed run (more epochs) rewrites best.pt long before gallery.pt; stopped in between,
    train.search ranked the old embeddings with the new weights' text encoder, without a word (the
    index that serve reads records its checkpoint's sha256; gallery.pt now does too)."""
    from shared.config import ConfigError
    from train.runs import load_run
    from train.search import Searcher

    from tests.train.test_index import _retrain_in_place

    collection, _, manifest = served
    run = tmp_path / 'seed0'
    shutil.copytree(collection.thumbs.parents[2], run, ignore=shutil.ignore_patterns('index'))
    assert Searcher(run, manifest.root.parent).search('a cat', 2)  # the run as trained: its gallery fits
    _retrain_in_place(load_run(run).checkpoint)
    with pytest.raises(ConfigError, match=r'gallery\.pt was made from another state of .*best\.pt .*Rerun the training'):
        Searcher(run, manifest.root.parent)


def test_ctrl_c_while_the_collection_loads_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe 12: Ctrl-C while the run, word vectors and index load (a wrong --run noticed) was a
    KeyboardInterrupt traceback; here it arrives as the run is looked up."""
    import pipelines.serve as serve

    def interrupted(run: Path) -> list[Path]:
        raise KeyboardInterrupt

    monkeypatch.setattr(serve, 'run_seeds', interrupted)
    try:
        code = serve.main(['--run', str(tmp_path / 'run'), '--index', str(tmp_path)])
    except KeyboardInterrupt:  # failed here: out of the test it would stop the whole session
        pytest.fail('the KeyboardInterrupt came out of main: a traceback for the user')
    assert code == 130
    assert capsys.readouterr().err == '\ninterrupted while loading: nothing was served\n'


def test_ctrl_c_while_train_search_loads_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe 12: as for serve, Ctrl-C while train.search loaded the run was a KeyboardInterrupt traceback."""
    import train.search as search

    def interrupted(run: Path) -> list[Path]:
        raise KeyboardInterrupt

    monkeypatch.setattr(search, 'run_seeds', interrupted)
    try:
        code = search.main(['--run', str(tmp_path / 'run'), '--query', 'a cat'])
    except KeyboardInterrupt:  # failed here: out of the test it would stop the whole session
        pytest.fail('the KeyboardInterrupt came out of main: a traceback for the user')
    assert code == 130 and capsys.readouterr().err == '\ninterrupted while loading the run: no query answered\n'


class _LostInterrupt:
    """Freed at once, it takes a signal as one arriving while Python runs a finaliser: the handler's
    KeyboardInterrupt is raised in `__del__`, where Python prints "Exception ignored" and drops it."""

    def __del__(self) -> None:
        import signal

        signal.raise_signal(signal.SIGINT)


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_ctrl_c_lost_in_a_finaliser_still_stops_indexing(served, demo_stores: tuple[Path, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """train.index's own SIGTERM handler left Ctrl-C to Python's, whose KeyboardInterrupt raised in a
    finaliser (`__del__`, the garbage collector) is dropped: the index went on, every chunk. The signal is
    remembered and the next chunk stops: exit 130 with its line, the later chunks pending. (Here, the
    fixture's run indexes the demo videos again, in 2 chunks, without thumbnails.)"""
    import signal

    import train.index as index
    from train.index import EMBEDDINGS, EmbeddingStore

    collection, _, _ = served
    data, features = demo_stores
    run = collection.thumbs.parents[2]
    monkeypatch.setattr(index, 'thumbnail', lambda video, out: False)
    real, calls = index._embed_rows, []

    def embed(*args, **kw):
        calls.append(1)
        if len(calls) == 2:  # chunk 0's (after the probe of row 0)
            _LostInterrupt()
        return real(*args, **kw)

    monkeypatch.setattr(index, '_embed_rows', embed)
    out, before = tmp_path / 'index', signal.getsignal(signal.SIGINT)
    code = index_main(['--run', str(run), '--dataset', 'demo', '--data-root', str(data), '--features-root',
                       str(features), '--out', str(out), '--chunk-size', '32'])
    err = capsys.readouterr().err
    assert code == 130 and err.strip().splitlines()[-1] == ('interrupted: finished chunks are kept; rerun the same '
                                                            'command to continue'), (code, err)
    assert len(calls) == 2 and EmbeddingStore(out / EMBEDDINGS).pending(range(2)) == [1]
    assert signal.getsignal(signal.SIGINT) is before  # put back


def test_a_done_chunk_whose_embeddings_file_is_missing_is_refused(served, demo_stores: tuple[Path, Path],
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """A partial copy of an index folder (a done chunk's `emb` file left out) read as zeros: serve started and
    /similar gave every video the same meaningless score. Refused at read, by the chunk's recorded sums, or by
    its file in an index made before them; `train.index --overwrite` makes it again."""
    import train.index as index
    from pipelines.serve import Collection
    from shared.store import StoreError
    from train.index import EMBEDDINGS, EmbeddingStore

    collection, _, manifest = served
    data, features = demo_stores
    run = collection.thumbs.parents[2]
    good = tmp_path / 'good'
    shutil.copytree(collection.thumbs.parent, good)
    emb_file = good / EMBEDDINGS / 'emb' / 'c' / '0' / '0' / '0'
    assert emb_file.is_file() and EmbeddingStore(good / EMBEDDINGS).read()[0] == list(manifest.video_ids)
    for sums in (True, False):  # an index made before the sums: its files are checked
        copy = tmp_path / f'copy-{sums}'
        shutil.copytree(good, copy)
        if not sums:
            shutil.rmtree(copy / EMBEDDINGS / 'chunk_sums')
            assert EmbeddingStore(copy / EMBEDDINGS).read()[0] == list(manifest.video_ids)  # whole: it loads
        (copy / EMBEDDINGS / 'emb' / 'c' / '0' / '0' / '0').unlink()
        with pytest.raises(StoreError, match=rf'{copy / EMBEDDINGS}: chunk 0 \(videos 0-59\) is done but its emb '
                                             r'.*python -m train.index --run .* --overwrite'):
            Collection(run, copy, data)
    monkeypatch.setattr(index, 'thumbnail', lambda video, out: False)
    assert index_main(['--run', str(run), '--dataset', 'demo', '--data-root', str(data), '--features-root',
                       str(features), '--out', str(copy), '--overwrite']) == 0
    assert Collection(run, copy, data).video.emb.abs().sum(-1).gt(0).any(-1).all()


def test_a_thumbnail_of_an_index_rebuilt_since_the_server_started_is_refused(served, tmp_path: Path) -> None:
    """The server holds the index's rows in memory but read thumbnails from disk by row number: with the
    folder indexed again (`train.index --overwrite`, another video set) while it ran, the page showed
    other videos' thumbnails beside the results. Now a 409 saying to restart it; the same index's
    zarr.json rewritten (its store_id kept) is still served."""
    import os

    from fastapi.testclient import TestClient

    from pipelines.serve import Collection, create_app
    from shared.datasets import Manifest
    from train.index import EMBEDDINGS, FAISS, THUMBS, EmbeddingStore

    collection, _, manifest = served
    run, index = collection.thumbs.parents[2], tmp_path / 'index'
    shutil.copytree(collection.thumbs.parent, index)
    client = TestClient(create_app(Collection(run, index, manifest.root.parent)), base_url='http://127.0.0.1:8000')
    first = client.get('/thumb/0')
    assert first.status_code == 200
    meta = index / EMBEDDINGS / 'zarr.json'
    same = meta.read_bytes()
    meta.unlink()
    meta.write_bytes(same)  # another file, the same store
    assert client.get('/thumb/0').content == first.content
    for name in (FAISS, THUMBS, EMBEDDINGS):  # as --overwrite does, then another index in its place
        shutil.rmtree(index / name)
    ids = ('x', 'y')
    other = Manifest('toy', tmp_path, ids, tuple(tmp_path / f'{v}.mp4' for v in ids), {}, {})
    EmbeddingStore.create(index / EMBEDDINGS, other, 1, 4, {'run': 'r', 'checkpoint': 'c', 'checkpoint_sha256': 'x'})
    os.mkdir(index / THUMBS)
    (index / THUMBS / '0.jpg').write_bytes(b'another video')
    for method in (client.get, client.head):
        r = method('/thumb/0')
        assert r.status_code == 409 and r.content != b'another video', r.content
    assert client.get('/thumb/0').json()['detail'] == 'the index was rebuilt since the server started: restart it'
    assert client.get('/search', params={'q': 'a cat', 'k': 2}).status_code == 200  # the rest is served from memory

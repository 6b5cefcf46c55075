"""The demo report describes the text encoders as the shipped demo configs build them."""
from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.demo import text_encoders
from train.config import load_run_cfg
from train.main import config_path


def test_the_report_names_the_depth_of_each_configs_text_encoder(tmp_path: Path) -> None:
    sources = {m: config_path(m, 'demo', None) for m in ('mmt', 'ssb')}
    layers = {m: load_run_cfg(path).model.text.layers for m, path in sources.items()}
    assert text_encoders(sources) == f'a {layers["mmt"]}-layer BERT and a {layers["ssb"]}-layer T5'
    # another depth in the config is what the report says (it once said 1 layer of a 2-layer T5)
    raw = yaml.safe_load(sources['ssb'].read_text())
    raw['model']['text']['layers'] = layers['ssb'] + 1
    deeper = tmp_path / 'ssb_demo.yaml'
    deeper.write_text(yaml.safe_dump(raw))
    assert text_encoders({**sources, 'ssb': deeper}).endswith(f'a {layers["ssb"] + 1}-layer T5')

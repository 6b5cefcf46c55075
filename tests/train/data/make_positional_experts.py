"""Makes positional_experts.pt: tiny MEE/CE/MMT models' weights as the code before per-expert modules
were keyed by name saved them (commit 15ea4d2), with their scores on fixed inputs; the fixture of
tests/train/test_checkpoints.py::test_positional_checkpoints_load_by_expert_name.

    git worktree add /tmp/old 15ea4d2 && cd /tmp/old && python tests/train/data/make_positional_experts.py OUT
"""
import sys, torch
sys.path.insert(0, '.'); sys.path.insert(0, 'tests/train')
import test_models as A, test_transformer_models as B
from train.models import ModelCfg, create_model
out = {}
for name in ('mee', 'ce', 'concat'):
    torch.manual_seed(0)
    m = create_model(ModelCfg(experts=A.EXPERTS, embed_dim=24, text_dim=12, text_clusters=3, **A.VARIANTS[name])).eval()
    with torch.no_grad():
        out[name] = {'model': m.state_dict(), 'scores': m(A._videos(4, 2), A._texts(3, 2))}
torch.manual_seed(0)
m = create_model(ModelCfg(model='mmt', experts=B.EXPERTS, transformer=B.SMALL, text=B.TINY_BERT)).eval()
with torch.no_grad():
    out['mmt'] = {'model': m.state_dict(), 'scores': m(B._videos(4, 2), B._texts(3, 2))}
torch.save(out, sys.argv[1])

"""On the real Gowalla (../shared/datasets/gowalla), minutes each: `make test ARGS="-m heavy"`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.heavy, pytest.mark.skipif(not (ROOT.parent / "shared" / "datasets" / "gowalla").exists(),
                                                    reason="../shared/datasets/gowalla is not here")]


def test_held_out_users_beat_popularity_twice(tmp_path):
    """500 users held out of training entirely, given 1-5 of their items: Recall@20 on the rest is at
    least twice popularity's (bench/cold_start.py, LightGCN trained 2 epochs on the other users)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "cold_start.py"), "--workdir", str(tmp_path),
                          "train.epochs=2", "train.validate_split=none"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    figures = json.loads(out[out.index("\n{\n") + 1:])
    assert figures["held_out_users"] == 500 and figures["users"] >= 450
    assert figures["recall"] >= 2 * figures["popularity_recall"], figures

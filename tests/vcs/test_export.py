"""`potluck export --to DIR`: the safetensors, the task's config and the model card from the history."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from potluck.runfiles import load_manifest, write_run
from potluck.store.versions import load_state
from potluck.vcs.export import task_config
from tests.cli.test_cli import assert_config_error, in_process
from tests.vcs.conftest import build_history


def test_export_to_a_folder_writes_weights_config_and_a_card(tmp_path: Path, capsys) -> None:
    b = build_history(tmp_path, rounds=3)
    out = tmp_path / "export"
    proc = in_process(capsys, "export", "--data-dir", str(b.data_dir), "--round", "1", "--to", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    stored = load_state(b.data_dir / "versions" / f"{b.versions[2]}.safetensors")
    exported = load_state(out / "model.safetensors")
    assert all(np.array_equal(stored[k], exported[k]) for k in stored) and set(stored) == set(exported)
    assert json.loads((out / "config.json").read_text()) == {"potluck_task": "toy", "task_args": {}}
    card = (out / "README.md").read_text()
    assert b.manifest.run_id in card and b.versions[2] in card
    for a in b.authors:  # both authors, 2 rounds each (rounds 0 and 1; round 2 is after the version)
        assert f"| `{a.node_id[:16]}` | 2 | 2 |" in card
    assert f"| 1 | `{b.versions[2][:16]}` | 2 | 2 |" in card and f"`{b.versions[3][:16]}`" not in card
    again = in_process(capsys, "export", "--data-dir", str(b.data_dir), "--to", str(out))
    assert_config_error(again, "not an empty folder")
    assert (out / "README.md").read_text() == card  # nothing lost


def test_the_lm_tasks_config_is_gpt2s(tmp_path: Path) -> None:
    run = write_run(tmp_path / "lm.toml", "lm").path
    config = task_config(load_manifest(run))
    assert config["model_type"] == "gpt2" and config["vocab_size"] == 256

"""tasks/probing.py: the probe set a run names, as the task hands it, checked against the manifest's
hash (and joining.probe_rule, the node's one-line refusal)."""

from __future__ import annotations

import numpy as np
import pytest

from potluck import joining
from potluck.errors import ConfigError
from potluck.merge.probe import ProbeError
from potluck.runfiles import write_run
from potluck.tasks import get_task
from potluck.tasks.digits import digits_split
from potluck.tasks.probing import probe_digest, run_probe


def test_the_digits_probe_set_is_fixed_per_class_and_disjoint_from_the_held_out_split():
    task = get_task("digits")
    probe = task.probe_set(10)
    assert probe.x.shape == (100, 64) and np.bincount(probe.y).tolist() == [10] * 10
    assert probe.digest() == get_task("digits", {"hidden": 16}).probe_set(10).digest()  # not the model's
    assert probe.digest() != task.probe_set(11).digest()
    train, test = digits_split()
    rows = {r.tobytes() for r in probe.x}
    assert rows <= {r.tobytes() for r in train.x}
    assert not rows & {r.tobytes() for r in test.x}  # evaluate() scores none of them


def test_run_probe_gives_the_rule_of_the_named_set_or_refuses_in_one_line(tmp_path):
    assert run_probe(write_run(tmp_path / "plain.toml", "digits").manifest) is None
    digest = probe_digest("digits", {}, 5)
    probe = {"set": digest, "per_class": 5, "frac": 0.25, "floor": 0.01}
    rule = run_probe(write_run(tmp_path / "good.toml", "digits", probe=probe).manifest)
    assert rule is not None and rule.probe.digest() == digest and (rule.frac, rule.floor) == (0.25, 0.01)
    assert rule.layers == ("fc1", "fc2") and len(rule.probe.y) == 50
    wrong = write_run(tmp_path / "wrong.toml", "digits", probe={"set": digest, "per_class": 6})
    with pytest.raises(ProbeError, match=f"hashes to .*, the run names {digest[:16]}") as e:
        run_probe(wrong.manifest)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"the run names .*; refusing to run"):
        joining.probe_rule(wrong.manifest)
    toy = write_run(tmp_path / "toy.toml", "toy", probe={"set": digest})
    with pytest.raises(ProbeError, match="task 'toy' hands no probe set"):
        run_probe(toy.manifest)
    with pytest.raises(ProbeError, match="hands no probe set"):
        probe_digest("toy", {}, 10)

"""potluck.contribute_module's pure part: the rank a joiner's module may take. The join itself runs
against real nodes in tests/exchange/test_modules.py (a module reaching the other nodes, a taken name)
and tests/test_contribute.py (a task without modules, a rank above the limit)."""

import pytest

from potluck.contribute_module import check_rank
from potluck.errors import ConfigError
from potluck.exchange.modules import Trunk

TRUNK = Trunk("run", {"a.weight": (32, 96), "b.weight": (8, 128)}, 32, max_rank=16)


def test_the_rank_is_bounded_by_the_run_and_the_adapted_shapes():
    check_rank(16, TRUNK, ["a.weight"])
    check_rank(8, TRUNK, ["a.weight", "b.weight"])
    with pytest.raises(ConfigError, match="--module-rank 17 is above the limit 16"):
        check_rank(17, TRUNK, ["a.weight"])
    with pytest.raises(ConfigError, match="--module-rank 9 is above the limit 8"):
        check_rank(9, TRUNK, ["a.weight", "b.weight"])

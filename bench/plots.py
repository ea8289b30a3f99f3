"""PNG plots of the benches: matplotlib (the ``bench`` extra) when installed, headless."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SKIPPED = "skipped: matplotlib is not installed (pip install matplotlib)"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save(fig: Any, path: Path) -> str:
    """Lay out ``fig``, write it to ``path`` (folders made as needed), free it; the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)

"""The README's variants table states parameter counts; they must be what the code builds."""

import re
from pathlib import Path

from crate_jax.cli import load_config_file
from crate_jax.model import paper_parameter_count
from crate_jax.model.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| [^|]+ \| `(configs/\w+\.py)` \|[^|]+\| ([\d.]+)M \| ([\d.]+)M \|$")


def test_variants_table_parameter_counts_match_the_code():
    rows = [ROW.match(line) for line in (REPO / "README.md").read_text().splitlines()]
    rows = [row for row in rows if row]
    not_variants = ("__init__.py", "ablation.py", "workdir.py")  # a study; a saved config
    assert {row.group(1) for row in rows} == {str(p.relative_to(REPO))
                                              for p in (REPO / "configs").glob("*.py")
                                              if p.name not in not_variants}
    for row in rows:
        path, stated_2l, stated_b = row.groups()
        for size, stated in (("2l", stated_2l), ("b", stated_b)):
            config = load_config_file(f"{REPO / path}:{size}")
            count = paper_parameter_count(ModelConfig.from_mapping(config.model))
            assert f"{count / 1e6:.2f}" == stated, f"{path}:{size} has {count:,} parameters"

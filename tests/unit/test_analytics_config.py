"""`analyses:` in a run config: typed, unknown keys refused, and turned into the loop's options."""

import pytest
from pydantic import ValidationError

from services.evaluator.analytics.options import AnalysisOptions
from services.evaluator.config import AnalysesEntry, RunSpec

BASE = {"datasets": [{"name": "d", "format": "manifest", "path": "m.csv"}], "models": [{"name": "m", "inprocess": True}]}


def test_defaults_compute_the_open_set_only_when_it_applies():
    spec = RunSpec.model_validate(BASE)
    assert spec.analyses.options() == AnalysisOptions()
    assert AnalysisOptions().open_set is None and not AnalysisOptions().scaling


def test_config_keys_reach_the_options():
    spec = RunSpec.model_validate({**BASE, "analyses": {"scaling": True, "compression": True, "target_precision": 0.9,
                                                          "repetitions": 4, "open_set": False}})
    options = spec.analyses.options()
    assert (options.scaling, options.compression, options.open_set) == (True, True, False)
    assert options.target_precision == 0.9 and options.repetitions == 4


@pytest.mark.parametrize("bad", [{"scalling": True}, {"repetitions": 2}, {"target_precision": 1.5}])
def test_unknown_or_out_of_range_keys_are_refused(bad):
    with pytest.raises(ValidationError):
        AnalysesEntry.model_validate(bad)

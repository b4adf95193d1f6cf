"""The example plugin runs tokenbench's own contract suite on its strategy."""

from tokenbench_centre_crop.strategy import CentreCrop

from tokenbench.testing import check_strategy_contract


def test_centre_crop_meets_the_contract(tmp_path):
    check_strategy_contract(CentreCrop(), workdir=tmp_path)


def test_aspect_parameter_changes_the_selection(tmp_path):
    import tokenbench

    ctx = tokenbench.StageContext.for_testing(num_visual=36, budget=8)
    assert CentreCrop().select(ctx).keep.tolist() != CentreCrop(aspect="3.0").select(ctx).keep.tolist()

"""Searches start from the default, then from configs tuned for the nearest problems on this or a
similar device."""
import random

from seqtune.device import DeviceInfo, interpreter_device
from seqtune.store.profile_file import save_entries
from seqtune.tuning.tuner import Budget, Tuner
from seqtune.tuning.warmstart import device_similarity, tuned_starts


def gpu(key, capability):
    return DeviceInfo(key, key.upper(), "cuda", capability, 100, 0, 232448, None)


H100 = gpu("nvidia-h100", "9.0")


def entry(n, dtype, block, skip_tail=False):
    return {"problem": {"N": n, "dtype": dtype},
            "config": {"BLOCK": block, "SKIP_TAIL": skip_tail, "num_warps": 1}}


def test_device_similarity_ranks_same_device_then_capability_then_major():
    assert device_similarity(H100, H100.as_dict()) == 0
    assert device_similarity(H100, gpu("nvidia-h200", "9.0").as_dict()) == 1
    assert device_similarity(H100, gpu("nvidia-gh-next", "9.2").as_dict()) == 2
    assert device_similarity(H100, gpu("nvidia-a100", "8.0").as_dict()) is None
    assert device_similarity(H100, interpreter_device().as_dict()) is None


def test_starts_come_from_the_nearest_problem_of_the_most_similar_devices_first(
        toy_registry, tmp_path):
    mine, shipped = tmp_path / "mine", tmp_path / "shipped"
    save_entries(shipped / "nvidia-h200.yaml", gpu("nvidia-h200", "9.0").as_dict(), "toy_scale",
                 "x", [entry(64, "float32", 16)])
    save_entries(shipped / "nvidia-a100.yaml", gpu("nvidia-a100", "8.0").as_dict(), "toy_scale",
                 "x", [entry(64, "float32", 64)])
    save_entries(mine / "nvidia-h100.yaml", H100.as_dict(), "toy_scale", "x",
                 [entry(4096, "float32", 64), entry(128, "float32", 32, skip_tail=True),
                  entry(64, "bfloat16", 16)])
    starts = tuned_starts(toy_registry, {"N": 100, "dtype": "float32"}, H100, [mine, shipped])
    # this device's float32 entry nearest to N=128 (the bfloat16 one does not match), then the
    # H200's; never the A100's (another architecture)
    assert starts == [entry(128, "float32", 32, skip_tail=True)["config"],
                      entry(64, "float32", 16)["config"]]


def test_the_tuner_starts_after_the_default_from_the_valid_tuned_starts(toy_registry):
    seen = {}

    class Spy:  # records what the strategy is given
        name = "spy"

        def search(self, space, evaluate, rng):
            seen["starts"] = space.starts

    tuned = [{"BLOCK": 64, "SKIP_TAIL": True, "num_warps": 1},  # too big for N=16
             {"BLOCK": 16, "SKIP_TAIL": True},  # num_warps added since: takes the default
             {"BLOCK": 16, "unknown": 1}]
    tuner = Tuner(interpreter_device(), None, Budget(None, None),
                  tuned_starts=lambda spec, problem: tuned)
    tuner.tune(toy_registry, {"N": 16, "dtype": "float32"}, Spy())
    default = toy_registry.default_for({"N": 16, "dtype": "float32"}, interpreter_device().limits)
    assert seen["starts"] == [default, {"BLOCK": 16, "SKIP_TAIL": True, "num_warps": 1}]


def test_searches_measure_the_tuned_start_right_after_the_default(toy_registry):
    from seqtune.tuning.search import ModelBased

    asked = []
    tuner = Tuner(interpreter_device(), None, Budget(None, 2),
                  tuned_starts=lambda spec, problem: [{"BLOCK": 64, "SKIP_TAIL": False,
                                                       "num_warps": 1}])
    space = tuner.space(toy_registry, {"N": 64, "dtype": "float32"})
    ModelBased().search(space, lambda config: asked.append(config) or 1.0, random.Random(0))
    assert asked[:2] == space.starts and asked[1]["BLOCK"] == 64


def test_starts_skip_entries_the_loader_would_not_use(toy_registry, tmp_path):
    """A float tile, a bool for an int knob or an unknown problem field is never a start."""
    bad = [{"problem": {"N": 100, "dtype": "float32"}, "config": {"BLOCK": 32.0}},
           {"problem": {"N": 100, "dtype": "float32"}, "config": {"num_warps": True}},
           {"problem": {"N": 100, "dtype": "float32", "extra": 1}, "config": {"BLOCK": 32}}]
    save_entries(tmp_path / "nvidia-h100.yaml", H100.as_dict(), "toy_scale", "x",
                 [*bad, entry(4096, "float32", 64)])
    starts = tuned_starts(toy_registry, {"N": 100, "dtype": "float32"}, H100, [tmp_path])
    assert starts == [entry(4096, "float32", 64)["config"]]

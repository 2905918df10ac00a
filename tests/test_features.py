import numpy as np
import pytest

from hazard.predictor.features import DYNAMICS, FEATURE_SETS, base_columns, trace_features
from hazard.signals import SIGNALS


def _row(n=60, seed=0):
    rng = np.random.default_rng(seed)
    row = {s: rng.random(n).astype(np.float32) for s in SIGNALS}
    row.update(trace_id="t", n_tokens=n, ratio=0.5, kv_tokens=np.arange(n) + 10, prompt_len=20,
               max_new_tokens=64, tokens=rng.integers(0, 5, n).tolist())
    return row


def test_dynamics_are_causal_and_equal_brute_force():
    names = FEATURE_SETS["logit_attn_config_dyn"]
    row = _row()
    x = trace_features(row, names)
    assert x.shape == (60, len(names)) and np.isfinite(x).all()
    # Changing the future changes nothing before it.
    later = _row()
    for s in SIGNALS:
        later[s][40:] = 7.0
    later["tokens"][40:] = [9] * 20
    assert np.array_equal(trace_features(later, names)[:40], x[:40])
    e = row["entropy"].astype(np.float64)
    col = {n: i for i, n in enumerate(names)}
    for t in (0, 5, 31, 59):
        win = e[max(0, t - 31): t + 1]
        assert np.isclose(x[t, col["roll32_mean:entropy"]], win.mean(), atol=1e-5)
        assert np.isclose(x[t, col["roll32_std:entropy"]], win.std(), atol=1e-4)
        assert x[t, col["roll8_min:entropy"]] == np.float32(e[max(0, t - 7): t + 1].min())
        assert np.isclose(x[t, col["drift:entropy"]], e[max(0, t - 15): t + 1].mean() - e[: min(t, 15) + 1].mean(),
                          atol=1e-5)


def test_novelty_rate_falls_in_a_repetition():
    row = _row()
    row["tokens"] = list(range(30)) + [1, 2, 3] * 10
    x = trace_features(row, ("novel4_32",))[:, 0]
    assert x[29] == 1.0 and x[-1] <= 0.25  # only the seams into the cycle are new


def test_cycle_features_are_the_cycle_rules_spans_and_causal():
    from hazard.control import features_from_packets
    from hazard.control.cycles import cycle_spans
    from hazard.errors import HazardError
    from hazard.predictor.features import CYCLE_FEATURES, CYCLE_PERIODS

    row = _row()
    row["tokens"] = list(range(20)) + [7] * 6 + [1, 2] * 5 + [3, 4, 5, 6] * 6
    names = FEATURE_SETS["live_cycle"]
    x = trace_features(row, names)
    assert base_columns(CYCLE_FEATURES) == {"tokens"} and x.shape == (60, len(names))
    for name, p in zip(CYCLE_FEATURES, CYCLE_PERIODS):
        col = x[:, names.index(name)]
        assert np.allclose(col, np.log1p(cycle_spans(row["tokens"], p)), atol=1e-6)
    j = names.index("cycle1")
    assert x[20, j] == 0 and np.isclose(x[22, j], np.log(4)) and x[26, j] == 0  # "7 7 7" spans 3 at its third 7
    assert x[59, names.index("cycle2")] < x[59, names.index("cycle4")]  # period 4 only under the wider cap
    later = dict(row, tokens=row["tokens"][:40] + [9] * 20)
    assert np.array_equal(trace_features(later, names)[:40], x[:40])  # the future changes nothing before it

    packets = np.zeros((2, 40), dtype=np.float32)  # live, the spans come from the controller's CycleSpans
    with pytest.raises(HazardError, match="history"):
        features_from_packets(list(names), packets, 0.5, [20, 20], [1, 1], 64)


def test_base_columns_and_unknown_features():
    assert base_columns(["roll8_mean:entropy", "novel4_32", "ratio"]) >= {"entropy", "tokens", "ratio"}
    assert set(DYNAMICS) <= set(FEATURE_SETS["logit_attn_config_dyn"])
    with pytest.raises(KeyError):
        trace_features(_row(), ("roll8_mean:nope",))


def test_live_controller_refuses_a_guard_with_history_features():
    from hazard.control import PolicyController, build_policy
    from hazard.errors import HazardError

    class Guard:
        feature_names = ["entropy", "roll8_mean:entropy"]

    with pytest.raises(HazardError, match="history"):
        PolicyController(build_policy("hazard"), Guard()).begin(4)
    Guard.feature_names = ["entropy", "state0", "state1"]
    with pytest.raises(HazardError, match="projected state"):
        PolicyController(build_policy("hazard"), Guard()).begin(4)


def test_signal_report_finds_the_informative_feature_within_a_setting():
    from hazard.predictor.data import Trace
    from hazard.predictor.metrics import signal_report

    rng = np.random.default_rng(0)
    traces = []
    for i in range(40):
        bad = i % 2 == 0
        n, onset = 30, 20 if bad else -1
        x = rng.random((n, 2)).astype(np.float32)
        if bad:
            x[10:, 0] += 2.0  # feature 0 rises before the onset; feature 1 is noise
        y = np.zeros((n, 1), np.float32)
        if bad:
            y[12:, 0] = 1
        valid = np.arange(n) < onset if bad else np.ones(n, bool)
        traces.append(Trace(x, y, valid, f"t{i}", f"p{i}", "gsm8k", "snapkv", 0.875, "m", bad, onset, x[:, 0]))
    rep = signal_report(traces, ["rise", "noise"], 0)
    assert rep["rise"]["trace_auroc"] > 0.95 and rep["rise"]["pre_onset_auroc"] > 0.9 and rep["rise"]["settings"] == 1
    assert 0.2 < rep["noise"]["trace_auroc"] < 0.8
    assert signal_report(traces[:4], ["rise"], 0)["rise"]["settings"] == 0  # too few traces per class


def test_state_features_are_the_state_columns_and_need_a_state():
    from hazard.errors import HazardError
    from hazard.signals.state import STATE_DIM

    row = _row(n=12)
    row["state"] = np.arange(12 * STATE_DIM, dtype=np.float16).reshape(12, STATE_DIM).tolist()
    names = FEATURE_SETS["live_state"]
    assert "state" in base_columns(names) and "entropy" in base_columns(names)
    x = trace_features(row, names)
    col = {n: i for i, n in enumerate(names)}
    assert np.array_equal(x[:, col["state3"]], np.asarray(row["state"], dtype=np.float32)[:, 3])
    assert np.array_equal(x[:, col["entropy"]], row["entropy"])
    row["state"] = []  # a collection without state_layer
    with pytest.raises(HazardError, match="state_layer"):
        trace_features(row, names)


def test_a_wider_state_is_read_as_set_at_width_and_a_wrong_width_says_so():
    """``state_dim: W`` collections: ``live_state@W`` reads every column; the 64-wide set refuses them with the
    name to use, and ``@W`` on a set without the state is refused."""
    from hazard.errors import HazardError
    from hazard.predictor.features import feature_names

    row = _row(n=12)
    row["state"] = np.arange(12 * 96, dtype=np.float16).reshape(12, 96).tolist()
    names = feature_names("live_state@96")
    assert names[-1] == "state95" and len(names) == len(FEATURE_SETS["live_state"]) + 32
    assert feature_names("live_state@64") == FEATURE_SETS["live_state"]
    x = trace_features(row, names)
    assert np.array_equal(x[:, names.index("state95")], np.asarray(row["state"], dtype=np.float32)[:, 95])
    with pytest.raises(HazardError, match="live_state@96|<set>@96"):
        trace_features(row, FEATURE_SETS["live_state"])
    for bad in ("live@96", "live_state@0", "live_state@x"):
        with pytest.raises(HazardError, match="@W"):
            feature_names(bad)

from pathlib import Path

import pytest

from hazard.errors import HazardError
from hazard.tasks import build_task, parse_answer, score

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


@pytest.mark.parametrize("text,expected", [
    ("so 3+4=7. The answer is 7.", "7"),
    ("The answer is $1,250.", "1250"),
    ("The final answer is: 3.50", "3.5"),
    ("thus \\boxed{42}", "42"),
    ("#### -6", "-6"),
    ("The answer is 5. The answer is 9.", "5"),  # first explicit answer wins
    ("I think it is 12", None),
])
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


def test_score():
    assert score("18", "18") and score("18", "18.0") and not score(None, "18") and not score("17", "18")


def test_gsm8k_prompts(gsm8k_dir):
    task = build_task("gsm8k", path=str(gsm8k_dir), split="test", start=1, limit=2, k_shot=2, seed=0)
    prompts = task.prompts()
    assert [p.id for p in prompts] == ["gsm8k-test-00001", "gsm8k-test-00002"]
    assert prompts[0].gold == "15"
    msgs = prompts[0].messages
    assert msgs[0]["role"] == "system" and len(msgs) == 1 + 2 * 2 + 1
    assert "<<" not in msgs[2]["content"] and "####" not in msgs[2]["content"]
    assert msgs[2]["content"].rsplit("\n", 1)[1] in {f"The answer is {g}." for g in prompts[0].distractors}
    assert len(prompts[0].distractors) == 2 and len(prompts[0].exemplar_texts) == 2


def test_gsm8k_start_past_the_split_is_one_clear_error(gsm8k_dir):
    # before, an empty prompt list ran on and the closed loop printed nan accuracies, then a TypeError
    n = len(build_task("gsm8k", path=str(gsm8k_dir), split="test", limit=0, k_shot=0).prompts())
    assert len(build_task("gsm8k", path=str(gsm8k_dir), split="test", start=n - 1, limit=5, k_shot=0).prompts()) == 1
    with pytest.raises(HazardError, match=f"start {n} is outside .*test.jsonl, which holds {n} problems"):
        build_task("gsm8k", path=str(gsm8k_dir), split="test", start=n, limit=5, k_shot=0).prompts()


def test_gsm8k_formats_change_the_prompt_not_the_problem(gsm8k_dir):
    from hazard.collect import TaskSpec
    from hazard.tasks.gsm8k import SYSTEMS

    spec = TaskSpec("gsm8k", {"path": str(gsm8k_dir), "limit": 2}, grid={"k_shot": [0, 2], "system": [0, 2]})
    tasks = [build_task("gsm8k", **o) for o in spec.expand()]
    assert [t.format for t in tasks] == ["k0e-s0", "k0e-s2", "k2e0s0", "k2e0s2"]
    by_format = {t.format: t.prompts() for t in tasks}
    assert {p.format for p in by_format["k2e0s2"]} == {"k2e0s2"}
    assert by_format["k0e-s2"][0].messages[0]["content"] == SYSTEMS[2] != SYSTEMS[0]
    assert len(by_format["k0e-s0"][0].messages) == 2 and len(by_format["k2e0s0"][0].messages) == 6
    # one problem keeps one id in every format, so prompt-grouped splits keep its formats together
    assert len({p.id for ps in by_format.values() for p in ps}) == 2
    with pytest.raises(HazardError, match="system 3 is unknown"):
        build_task("gsm8k", path=str(gsm8k_dir), system=3).prompts()
    union = TaskSpec("gsm8k", {"limit": 2}, grid=[{"k_shot": [0]}, {"k_shot": [3], "seed": [0, 1]}]).expand()
    assert union == [{"limit": 2, "k_shot": 0}, {"limit": 2, "k_shot": 3, "seed": 0},
                     {"limit": 2, "k_shot": 3, "seed": 1}]
    with pytest.raises(HazardError, match="grid.k_shot must be a non-empty list"):
        TaskSpec("gsm8k", grid={"k_shot": 3}).expand()


def test_gsm8k_train_split_never_uses_the_question_as_exemplar(gsm8k_dir):
    prompts = build_task("gsm8k", path=str(gsm8k_dir), split="train", limit=0, k_shot=2).prompts()
    assert len(prompts) == 2
    for p in prompts:
        assert all(p.messages[-1]["content"] != m["content"] for m in p.messages[1:-1])


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared GSM8K not present")
def test_real_gsm8k_file():
    prompts = build_task("gsm8k", path=str(SHARED), limit=3).prompts()
    assert prompts[0].gold == "18" and len(prompts) == 3


@pytest.mark.parametrize("name", ["kv_retrieval", "var_tracking", "passkey"])
def test_synthetic_tasks_are_seeded_and_answerable(name):
    a = build_task(name, n_prompts=5, seed=3).prompts()
    b = build_task(name, n_prompts=5, seed=3).prompts()
    c = build_task(name, n_prompts=5, seed=4).prompts()
    assert [p.messages for p in a] == [p.messages for p in b]
    assert [p.messages for p in a] != [p.messages for p in c]
    for p in a:
        assert p.gold in p.messages[-1]["content"] and p.gold not in p.distractors
        assert len({p.id for p in a}) == 5


def test_var_tracking_chain_resolves_to_gold():
    p = build_task("var_tracking", n_prompts=1, n_chains=3, hops=3, seed=0).prompts()[0]
    text = p.messages[-1]["content"]
    assert "31" not in text.split("?")[0]  # the worked example's numbers stay in the example
    env = dict(line.split(" = ") for line in text.split("\n") if " = " in line)
    var = text.rsplit("value of ", 1)[1].split("?")[0]
    while not env[var].isdigit():
        var = env[var]
    assert env[var] == p.gold


def test_bad_task_inputs(tmp_path):
    with pytest.raises(HazardError, match="unknown task"):
        build_task("mmlu")
    with pytest.raises(HazardError, match="unknown option"):
        build_task("kv_retrieval", n_keys=3)
    with pytest.raises(HazardError, match="does not exist"):
        build_task("gsm8k", path=str(tmp_path / "nope")).prompts()
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    with pytest.raises(HazardError, match="test.jsonl:2: not valid JSON"):
        build_task("gsm8k", path=str(tmp_path), k_shot=0).prompts()


@pytest.mark.parametrize("name", ["kv_retrieval", "var_tracking"])
def test_synthetic_prompts_do_not_depend_on_hash_seed(name):
    import subprocess
    import sys

    code = f"from hazard.tasks import build_task; print(build_task({name!r}, n_prompts=3).prompts()[2].messages)"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outs) == 1

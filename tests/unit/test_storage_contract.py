"""Array encoding, key and name grammar, and run-id stability: the contract between app and worker."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from hypothesis.extra import numpy as hnp

from backend import keys, names, tensor_io
from backend.settings import Settings
from backend.spec import RunSpec, SpecError, build_spec, run_id_for

DTYPES = st.sampled_from(["float16", "float32", "float64", "int32", "int64", "uint8", "bool"])


@hsettings(max_examples=60, deadline=None)
@given(arr=hnp.arrays(dtype=DTYPES, shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=7)),
       compress=st.booleans(), shuffle=st.booleans())
def test_array_round_trip(arr: np.ndarray, compress: bool, shuffle: bool) -> None:
    back = tensor_io.decode(tensor_io.encode(arr, compress=compress, shuffle=shuffle))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_decode_refuses_foreign_bytes() -> None:
    import pickle

    with pytest.raises(ValueError):
        tensor_io.decode(pickle.dumps(np.zeros(3)))
    with pytest.raises(TypeError):
        tensor_io.encode(np.array(["a"], dtype=object))


def test_key_and_name_grammar_is_pinned() -> None:
    assert keys.run_manifest("atlas", "ab12") == "atlas:run:ab12"
    assert keys.run_tensor("atlas", "ab12", names.attn_pattern(3, 5)) == "atlas:run:ab12:t:prompt.3.blocks.5.attn.pattern"
    assert names.attn_received(0, 1) == "prompt.0.blocks.1.attn.received"
    assert names.resid_absmax(2, 0) == "prompt.2.blocks.0.resid.absmax"
    assert names.metric("sink_first") == "metrics.sink_first"
    assert names.embedding(1, 2, "umap") == "embedding.1.2.umap"
    assert names.embedding_meta(1, 2) == "embedding.1.2.meta"
    assert names.embedding(1, 2, "tsne_raw") == "embedding.1.2.tsne_raw"
    assert names.prompt_input_ids(4) == "prompt.4.input_ids"
    assert names.resid_absmax_dim(2, 1) == "prompt.2.blocks.1.resid.absmax_dim"
    assert names.resid_norm(1, 3) == "prompt.1.blocks.3.resid.norm"
    assert names.output_logits(2) == "prompt.2.logits"
    assert [names.streaming(k) for k in names.STREAMING_KINDS] == [
        "streaming.nll_full", "streaming.nll_window", "streaming.nll_sink", "streaming.params", "streaming.reassigned"]
    assert names.role_array("dominant") == "roles.dominant"
    assert names.role_array("positional_profile") == "roles.positional_profile"
    assert names.role_array("retrieval_recall") == "roles.retrieval_recall"
    assert names.metric("importance") == "metrics.importance"
    assert names.metric("importance_normalised") == "metrics.importance_normalised"
    assert names.IMPORTANCE_META == "importance.meta"
    assert names.pruning("importance", "fractions") == "pruning.importance.fractions"
    assert names.pruning("random", "loss_std") == "pruning.random.loss_std"
    assert names.pruning("reverse", "removed") == "pruning.reverse.removed"
    assert names.PRUNING_ORDERS == ("importance", "random", "reverse")
    assert names.PRUNING_KEYS == ("fractions", "loss", "perplexity", "accuracy", "loss_std", "perplexity_std",
                                  "accuracy_std", "removed")
    assert [names.lab_pattern(side, 7) for side in names.LAB_SIDES] == ["lab.before.7", "lab.after.7"]
    assert keys.derived("atlas", "d" * 64) == "atlas:derived:" + "d" * 64
    assert keys.derived_array("atlas", "d" * 64, names.lab_pattern("after", 2)) == f"atlas:derived:{'d' * 64}:t:lab.after.2"
    for bad in (lambda: names.streaming("nll"), lambda: names.pruning("best", "loss"),
                lambda: names.pruning("random", "auc"), lambda: names.lab_pattern("during", 0)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError):
        keys.run_tensor("atlas", "ab12", "x*:y")


def test_run_id_is_content_addressed() -> None:
    s = Settings()
    a = build_spec("m", ["one", "two"], {"seed": 1}, s)
    b = build_spec("m", [" one ", "two", "  "], {"seed": 1}, s)
    assert run_id_for(a, "fp") == run_id_for(b, "fp")  # whitespace-only lines and padding ignored
    assert run_id_for(a, "fp") != run_id_for(a, "other-weights")
    assert run_id_for(a, "fp") != run_id_for(build_spec("m", ["one", "two"], {"seed": 2}, s), "fp")
    # pinned literals: a change here changes every cached run's address (bump ENGINE_VERSION instead, and update
    # these literals in the same commit)
    assert run_id_for(RunSpec("m", ("x",), "text", {}), "fp") == "74a06e0440398d09f6b64862c6461b90"
    assert run_id_for(a, "fp") == "6764506a2e9e92fca9465460eb781793"  # with the default options filled in
    assert len(run_id_for(a, "fp")) == 32


@pytest.mark.parametrize("prompts,message", [
    ([], "no prompt"), (["   ", ""], "no prompt"), ("text", "list"), ([1, 2], "string"),
    (["x"] * 300, "too many prompts"), (["x" * 30_000], "characters"),
])
def test_bad_prompts_are_refused_with_a_message(prompts, message) -> None:
    with pytest.raises(SpecError, match=message):
        build_spec("m", prompts, None, Settings())


@pytest.mark.parametrize("options,message", [
    ({"dtype": "int8"}, "dtype"), ({"bogus": 1}, "unknown option"), ({"analyses": ["x"]}, "analyses"),
    ({"seed": -1}, "seed"), ("x", "object"), ({"importance_rule": "per_batch"}, "importance_rule"), ({"max_points_per_head": 10**9}, "between 100 and 50,000"),
    ({"max_points_per_head": 5}, "max_points_per_head"), ({"max_points_per_head": 2.5}, "integer"),
    ({"analyses": ["embedding"], "embedding_methods": []}, "at least one projection"),
    ({"embedding_methods": ["mds"]}, "embedding_methods"),
])
def test_bad_options_are_refused(options, message) -> None:
    with pytest.raises(SpecError, match=message):
        build_spec("m", ["p"], options, Settings())


def test_image_inputs_must_be_digests() -> None:
    with pytest.raises(SpecError, match="SHA-256 digests"):
        build_spec("m", ["../../etc/passwd"], None, Settings(), kind="image")
    assert build_spec("m", ["ab" * 32], None, Settings(), kind="image").inputs == ("ab" * 32,)

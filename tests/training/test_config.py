"""The run configuration: sections of frozen dataclasses, filled from YAML (nested or flat) and
then flags; unknown keys, bad types and bad choices are errors that name the key."""

import pytest

from megatron_infimed.config import flags


def load_config(argv):
    config, _ = flags.load_config(argv)
    return config


def from_yaml(tmp_path, text: str, *argv: str):
    """The config of ``text`` written to ``run.yaml``, then the flags ``argv``."""
    config_file = tmp_path / "run.yaml"
    config_file.write_text(text)
    return load_config(["--config", str(config_file), *argv])


def test_flags_override_yaml(tmp_path):
    config = from_yaml(tmp_path, "preset: tiny\nmock-data: true\nseq_length: 512\nlr: 0.01\n", "--lr", "0.5")
    assert (config.batch.seq_length, config.optim.lr, config.data.mock_data) == (512, 0.5, True)


def test_unknown_yaml_key_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key 'learning_rate' in .*run.yaml"):
        from_yaml(tmp_path, "mock_data: true\nlearning_rate: 0.1\n")


def test_unknown_flag_is_an_error(capsys):
    with pytest.raises(SystemExit):
        load_config(["--mock-data", "--learning-rate", "0.1"])
    assert "--learning-rate" in capsys.readouterr().err


def test_fp8_needs_transformer_engine_layers():
    with pytest.raises(ValueError, match="--fp8 needs Transformer Engine"):
        load_config(["--mock-data", "--fp8", "hybrid"])


def test_training_without_data_is_refused():
    with pytest.raises(ValueError, match="no training data"):
        load_config([])


def test_model_overrides_are_json(tmp_path):
    config = load_config(["--mock-data", "--model-overrides", '{"reduction.kind": "none"}'])
    assert config.model.overrides == {"reduction.kind": "none"}


def test_yaml_numbers_in_e_notation_become_floats(tmp_path):
    assert from_yaml(tmp_path, "mock_data: true\nlr: 1e-3\n").optim.lr == 0.001


def test_a_value_of_the_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="'train_iters' .* 'many'.*expected int"):
        from_yaml(tmp_path, "mock_data: true\ntrain_iters: many\n")


def test_a_flag_can_unfreeze_what_the_yaml_froze(tmp_path):
    config = from_yaml(tmp_path, "mock_data: true\nfreeze_vision: true\n", "--no-freeze-vision")
    assert config.model.freeze_vision is False


def test_yaml_nests_by_section_or_uses_flat_names(tmp_path):
    config = from_yaml(tmp_path, "mock_data: true\nparallel: {tensor_model_parallel_size: 2}\nseq_length: 256\n"
                                 "batch: {micro_batch_size: 2}\nmodel_overrides: {reduction.kind: none}\n")
    assert (config.parallel.tensor_model_parallel_size, config.batch.seq_length, config.batch.micro_batch_size) \
        == (2, 256, 2)
    assert config.model.overrides == {"reduction.kind": "none"}


def test_an_unknown_key_inside_a_section_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown key 'tensor_parallel' in section 'parallel'"):
        from_yaml(tmp_path, "mock_data: true\nparallel: {tensor_parallel: 2}\n")


def test_a_choice_not_offered_is_named(tmp_path):
    message = r"'loss_weighting' .* 'tokens'; expected one of \['token', 'sample', 'square'\]"
    with pytest.raises(ValueError, match=message):
        from_yaml(tmp_path, "mock_data: true\nloss_weighting: tokens\n")


def test_a_section_may_be_given_as_json_and_a_single_flag_wins(tmp_path):
    config = load_config(["--mock-data", "--data", '{"paths": ["/a", "/b"], "num_workers": 4}', "--num-workers", "3"])
    assert (config.data.paths, config.data.num_workers) == (("/a", "/b"), 3)


def test_paths_may_name_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/lustre/prepared")
    config = from_yaml(tmp_path, "tokenizer: ${TOKENIZER:-tok.model}\ndata: {paths: [\"${DATA_ROOT}/medical\"]}\n")
    assert (config.data.paths, config.data.tokenizer) == (("/lustre/prepared/medical",), "tok.model")


def test_an_unset_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ValueError, match=r"\$\{NOT_SET_ANYWHERE\}, which is not set"):
        from_yaml(tmp_path, "mock_data: true\nsave: ${NOT_SET_ANYWHERE}/ckpt\n")


def test_packing_is_a_positive_option_with_a_no_flag():
    assert load_config(["--mock-data"]).batch.packing is True
    assert load_config(["--mock-data", "--no-packing"]).batch.packing is False


def test_help_documents_every_option_with_its_meaning_and_default(capsys):
    from dataclasses import fields

    from megatron_infimed.config.run import SECTIONS

    with pytest.raises(SystemExit):
        flags.load_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            flag = "--" + flags.flat_name(section, f.name).replace("_", "-")
            assert flag in text, flag
            assert f"{flag} " in text and "(default: " in text
    assert "tensor parallelism) (default: 1)" in text


def test_freezing_every_part_is_refused_at_parse_time():
    with pytest.raises(ValueError, match="every part of the model is frozen"):
        load_config(["--mock-data", "--freeze-vision", "--freeze-projector", "--freeze-language"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--sequence-parallel"], "--sequence-parallel .* needs --tensor-model-parallel-size > 1"),
    (["--context-parallel-size", "2", "--seq-length", "190"],
     r"--seq-length 190 must be a multiple of 4 \(2 × context-parallel size 2\).* use 192"),
    (["--tensor-model-parallel-size", "4", "--sequence-parallel", "--seq-length", "1022"],
     r"--seq-length 1022 must be a multiple of 4 \(tensor-parallel size 4 \(sequence parallelism\)\)"),
    (["--transformer-impl", "te", "--bf16", "--fp8", "hybrid", "--fp8-recipe", "mxfp8", "--seq-length", "1040"],
     r"multiple of 32 \(the mxfp8 FP8 recipe\)"),
    # Each CP rank's tokens are split again by SP: 1028 / 2 = 514 would not split over 4 TP ranks.
    (["--tensor-model-parallel-size", "4", "--sequence-parallel", "--context-parallel-size", "2",
      "--seq-length", "1028"], r"must be a multiple of 8 .*use 1032"),
    # 1056 / 2 = 528 rows per CP rank: not a multiple of mxfp8's 32.
    (["--transformer-impl", "te", "--bf16", "--fp8", "hybrid", "--fp8-recipe", "mxfp8", "--context-parallel-size",
      "2", "--seq-length", "1056"], r"must be a multiple of 64"),
])
def test_layouts_that_cannot_run_are_refused_at_parse_time_naming_why(flags, message):
    with pytest.raises(ValueError, match=message):
        load_config(["--mock-data", *flags])


def test_sequence_and_context_parallel_layouts_that_can_run_are_accepted():
    config = load_config(["--mock-data", "--tensor-model-parallel-size", "2", "--sequence-parallel",
                             "--context-parallel-size", "2", "--seq-length", "1024"])
    assert config.parallel.sequence_parallel and config.parallel.context_parallel_size == 2

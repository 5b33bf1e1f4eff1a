"""The run configuration: YAML, then flags; unknown keys are errors that name the key."""

import pytest
import torch

from megatron_infimed.training.config import load_config


def test_flags_override_yaml(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("preset: tiny\nmock-data: true\nseq_length: 512\nlr: 0.01\n")
    config = load_config(["--config", str(config_file), "--lr", "0.5"])
    assert (config.seq_length, config.lr, config.mock_data) == (512, 0.5, True)


def test_unknown_yaml_key_is_named(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("mock_data: true\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown key 'learning_rate' in .*run.yaml"):
        load_config(["--config", str(config_file)])


def test_unknown_flag_is_an_error(capsys):
    with pytest.raises(SystemExit):
        load_config(["--mock-data", "--learning-rate", "0.1"])
    assert "--learning-rate" in capsys.readouterr().err


def test_fp8_needs_transformer_engine_layers():
    with pytest.raises(ValueError, match="--fp8 needs Transformer Engine"):
        load_config(["--mock-data", "--fp8", "hybrid"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only refusal")
def test_the_distributed_optimizer_is_refused_without_cuda():
    from megatron_infimed.training.setup import build_optimizer

    config = load_config(["--mock-data", "--use-distributed-optimizer"])
    assert config.use_distributed_optimizer
    with pytest.raises(ValueError, match="--use-distributed-optimizer needs CUDA"):
        build_optimizer([], config)


def test_training_without_data_is_refused():
    with pytest.raises(ValueError, match="no training data"):
        load_config([])


def test_model_overrides_are_json(tmp_path):
    config = load_config(["--mock-data", "--model", '{"reduction.kind": "none"}'])
    assert config.model == {"reduction.kind": "none"}


def test_yaml_numbers_in_e_notation_become_floats(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("mock_data: true\nlr: 1e-3\n")
    assert load_config(["--config", str(config_file)]).lr == 0.001


def test_a_value_of_the_wrong_type_names_the_key(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("mock_data: true\ntrain_iters: many\n")
    with pytest.raises(ValueError, match="'train_iters' .* 'many'.*expected int"):
        load_config(["--config", str(config_file)])


def test_a_flag_can_unfreeze_what_the_yaml_froze(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("mock_data: true\nfreeze_vision: true\n")
    assert load_config(["--config", str(config_file), "--no-freeze-vision"]).freeze_vision is False

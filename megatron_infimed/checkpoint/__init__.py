"""What a checkpoint folder holds on disk, free of megatron-core: the tokenizer files it may carry
and the checksum manifest that proves its bytes are the ones written."""

"""Side-by-side benchmarks behind ``infimed-bench`` (``docs/benchmarks.md`` has the method and figures).

| module        | measures                                                                 |
|---------------|--------------------------------------------------------------------------|
| packing       | online packer vs pad-to-longest and greedy knapsack: fill, µs/sample      |
| loader        | shards → packs vs a LLaVA-style JSON + JPEG loader: samples/s             |
| train         | packed vs padded vs transformers Qwen3 padded: real tokens/s; 729 vs 144   |
| attention     | packed per-sample vs dense causal attention over one pack                |
| convert       | export_hf vs a safetensors copy of the same bytes: GB/s, peak RSS         |
| generate      | KV cache vs recompute: new tokens/s                                      |
| gpu_check     | the Python half of ``tools/gpu_check.sh`` (MFU of infimed-1.7b)           |
| timing/report | alternating medians; table + last-line JSON                              |
| length_mix    | the shipped length mix (``data/length_mix.json``; ``record_length_mix``)  |
| workload      | the small CPU model config and mix-shaped samples                        |
"""

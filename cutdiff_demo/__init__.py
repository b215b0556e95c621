"""The pack's demo: a tiny model trained on procedural one-object scenes (model), its training
data (data) and the metrics the repetition benchmark measures with (metrics)."""

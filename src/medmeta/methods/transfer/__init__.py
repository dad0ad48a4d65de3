"""Transfer baselines: a backbone pretrained with ordinary supervised learning, then a simple test-time
rule on each support set (fine-tuning, linear probe, SimpleShot, Baseline++)."""

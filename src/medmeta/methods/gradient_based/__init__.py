"""Optimisation-based methods: an initialisation (and inner-loop settings) meta-learned so that a few
gradient steps on a support set fit the task (MAML, FOMAML, MAML++, Meta-SGD, ANIL, Reptile)."""

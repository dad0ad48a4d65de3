"""Model-based few-shot methods: a network that learns from the support set in its own forward pass.

`medmeta.methods.model_based.mann` reads the support set as a sequence into an external memory (MANN);
`medmeta.methods.model_based.meta_lstm` trains the learner with an LSTM that outputs its parameter updates
(Meta-LSTM); `medmeta.methods.model_based.support_norm` gives Meta-LSTM batch norm with the support set's
statistics.
"""

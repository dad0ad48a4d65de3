"""Metric methods: a query is scored by its similarity to the support set in a learned embedding
(Prototypical, Matching, Relation and Siamese networks)."""

"""Federated few-shot learning: sites that keep their images and share only parameters, through Flower.

- `medmeta.federated.params`: parameters as named arrays, the server's weighted mean (FedAvg), the proximal
  term (FedProx);
- `medmeta.federated.sites`: one site's images, split once; seeded episodes with the site's class order;
- `medmeta.federated.learners`: the local learners (medmeta's MAML, Meta-SGD, first-order MAML for
  Per-FedAvg, supervised fine-tuning) and one local update of a site;
- `medmeta.federated.dp`: Opacus DP-SGD of a site's update and its epsilon;
- `medmeta.federated.evaluation`: a site's few-shot test after local adaptation;
- `medmeta.federated.protocol`: the messages between server and sites, the server's loop;
- `medmeta.federated.flower_apps`: Flower's ServerApp and ClientApp around them;
- `medmeta.federated.engines`: Flower's simulation engine, or a SuperLink and SuperNodes as processes;
- `medmeta.federated.baselines`: centralised and site-only training in one process;
- `medmeta.federated.run`, `medmeta.federated.report`: ``medmeta federated``.

Only `flower_apps`, `engines` and `dp` need the optional extra ``medmeta[federated]`` (flwr, opacus).
"""

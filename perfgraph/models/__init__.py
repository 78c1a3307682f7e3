"""Cost models that share one interface: the GNN and the baselines it is compared with."""
